"""Published artifacts: metadata, listing, and file downloads (presigned on S3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from neffcache.db.models import ORIGINS, Artifact
from neffcache.digests import DIGEST_PATTERN, bare_hex, is_bare_hex
from neffcache.errors import ArtifactExists, BlobMissing, Forbidden, InvalidNeff, NotFound
from neffcache.service import cache, publish
from neffcache.service.auth import PUBLISH, READ, grant
from neffcache.service.errors import KEY_ERRORS, STORE_ERRORS, error_responses
from neffcache.service.pagination import MAX_LIMIT, fetch_page
from neffcache.service.resolve import PREFIX_ERRORS, KeyInPath, resolve_artifact
from neffcache.service.routes.deps import caller, context
from neffcache.service.streaming import object_response
from neffcache.service.views import artifact_view
from neffcache.spec import NAMESPACE_PATTERN, PublishRequest, Text

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])
# Naming an artifact: its key or a prefix, found in a namespace the token may act in.
NAMED_ERRORS = (*PREFIX_ERRORS, Forbidden)
# The listing's origin filter, a Literal of ORIGINS (mypy reads it as the str it holds).
if TYPE_CHECKING:
    Origin = str
else:
    Origin = Literal[ORIGINS]


def _get(request: Request, session: Session, key: str) -> Artifact:
    """The artifact named by its key or a unique prefix of it, if the token may see its namespace.
    A whole key is looked for among those in memory first (cache.published)."""
    whole = key.lower()
    artifact = cache.published(context(request), session, whole) if is_bare_hex(whole) else None
    if artifact is None:
        artifact = resolve_artifact(session, key)
    grant(request).check(artifact.namespace)
    return artifact


@router.get("", dependencies=[READ], responses=error_responses(Forbidden))
def list_artifacts(
    request: Request,
    model: str | None = Query(None, pattern=DIGEST_PATTERN, description="model digest, sha256:<hex>"),
    target: Text | None = None,
    compiler: Annotated[Text | None, Query(description="compiler name, version, or name==version")] = None,
    namespace: Annotated[str | None, Query(pattern=NAMESPACE_PATTERN)] = None,
    origin: Annotated[Origin | None, Query(description="farm (compiled by a worker) or pushed")] = None,
    limit: int = Query(50, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Artifacts in the token's namespaces, newest first."""
    query = grant(request).limit(select(Artifact), Artifact.namespace)
    if namespace:
        grant(request).check(namespace)
        query = query.where(Artifact.namespace == namespace)
    if origin:
        query = query.where(Artifact.origin == origin)
    if model:
        query = query.where(Artifact.model_digest == model)
    if target:
        query = query.where(Artifact.target == target)
    if compiler:
        name, sep, version = compiler.partition("==")
        if sep:
            query = query.where(Artifact.compiler_name == name, Artifact.compiler_version == version)
        else:
            query = query.where(or_(Artifact.compiler_name == compiler, Artifact.compiler_version == compiler))
    with context(request).db.session() as session:
        rows, cursor_out = fetch_page(session, query, Artifact.created_at, Artifact.key, limit, cursor)
        return {"artifacts": [artifact_view(a) for a in rows], "next_cursor": cursor_out}


@router.get("/{key}", dependencies=[READ], response_model=dict[str, Any],
            responses=error_responses(*NAMED_ERRORS))
async def get_artifact(key: KeyInPath, request: Request) -> JSONResponse:
    """One artifact, by its key or a unique prefix of it (8 hex characters at least)."""
    # Warm (a whole key whose artifact and counts are in memory): answered in the event loop.
    view = cache.warm_artifact(context(request), key.lower(), grant(request))
    if view is None:
        return await run_in_threadpool(_artifact_from_database, key, request)
    return JSONResponse(view)


def _artifact_from_database(key: str, request: Request) -> JSONResponse:
    ctx = context(request)
    with ctx.db.session() as session:
        artifact = _get(request, session, key)
    ctx.metrics.hit_served("artifact", "database")
    return JSONResponse(artifact_view(artifact, cache.artifact_hits(ctx, artifact.key)))


@router.get(
    "/{key}/files/{name:path}",  # a file of a folder artifact is named by its relative path
    dependencies=[READ],
    responses=error_responses(*NAMED_ERRORS, *STORE_ERRORS, into={
        307: {"description": "redirect to a presigned URL (S3)"},
        200: {"description": "the bytes (folder store)",
              "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    }),
)
def download_file(key: KeyInPath, name: str, request: Request) -> Response:
    """Download one file of an artifact (named by its key or a unique prefix of it); counted as a
    download. The sha256 is in X-Neffcache-Sha256."""
    ctx = context(request)
    with ctx.db.session() as session:
        artifact = _get(request, session, key)
        key = artifact.key
        entry = next((f for f in artifact.files if f.name == name), None)
        if entry is None:
            raise NotFound(f"artifact {key} has no file {name!r} (it has {', '.join(f.name for f in artifact.files)})")
    response = object_response(
        ctx, bare_hex(entry.digest), name, entry.size, found_by="artifact_file",
        what=f"file {name!r} of artifact {key} ({entry.digest})",
    )
    cache.record_download(ctx, artifact, caller(request), entry.size)
    return response


@router.post("", status_code=201, dependencies=[PUBLISH],
             responses=error_responses(BlobMissing, ArtifactExists, InvalidNeff, Forbidden, *KEY_ERRORS, *STORE_ERRORS,
                                       into={200: {"description": "already published with the same files"}}))
def publish_artifact(body: PublishRequest, request: Request) -> JSONResponse:
    """Publish files compiled elsewhere (e.g. a host's libneuronxla cache) under the spec's key
    (scope `publish`, in the spec's namespace). The files are uploaded blobs; every NEFF among
    them is validated first. The artifact's origin is `pushed`, by this token."""
    grant(request).check(body.spec.namespace)
    outcome = publish.publish(context(request), body, caller(request))
    return JSONResponse(outcome.body, status_code=outcome.status_code)
