"""Published artifacts: metadata, listing, and file downloads (presigned on S3)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import or_, select

from neffcache.db.models import Artifact
from neffcache.digests import bare_hex
from neffcache.errors import NotFound
from neffcache.service import cache, publish
from neffcache.service.auth import READ, WRITE
from neffcache.service.pagination import MAX_LIMIT, fetch_page
from neffcache.service.resolve import resolve_artifact
from neffcache.service.routes.deps import caller, context, object_response
from neffcache.service.views import artifact_view
from neffcache.spec import PublishRequest

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("", dependencies=[READ])
def list_artifacts(
    request: Request,
    model: str | None = Query(None, description="model digest, sha256:<hex>"),
    target: str | None = None,
    compiler: str | None = Query(None, description="compiler name, version, or name==version"),
    limit: int = Query(50, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> dict[str, Any]:
    query = select(Artifact)
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


@router.get("/{key}", dependencies=[READ])
def get_artifact(key: str, request: Request) -> dict[str, Any]:
    """One artifact, by its key or a unique prefix of it (8 hex characters at least)."""
    with context(request).db.session() as session:
        artifact = resolve_artifact(session, key)
        return artifact_view(artifact, cache.artifact_hits(session, artifact.key))


@router.get(
    "/{key}/files/{name}",
    dependencies=[READ],
    responses={
        307: {"description": "redirect to a presigned URL (S3)"},
        200: {"description": "the bytes (folder store)"},
    },
)
def download_file(key: str, name: str, request: Request) -> Response:
    """Download one file of an artifact (named by its key or a unique prefix of it); counted as a
    download. The sha256 is in X-Neffcache-Sha256."""
    ctx = context(request)
    with ctx.db.session() as session:
        artifact = resolve_artifact(session, key)
        key = artifact.key
        entry = next((f for f in artifact.files if f.name == name), None)
        if entry is None:
            raise NotFound(f"artifact {key} has no file {name!r} (it has {', '.join(f.name for f in artifact.files)})")
    response = object_response(
        ctx, bare_hex(entry.digest), name, entry.size,
        missing=f"file {name!r} of artifact {key} ({entry.digest}) is missing from the object store",
    )
    cache.record_download(ctx, artifact, caller(request))
    return response


@router.post("", status_code=201, dependencies=[WRITE],
             responses={200: {"description": "already published with the same files"},
                        409: {"description": "blob_missing, or artifact_exists with other files"},
                        422: {"description": "invalid spec, or invalid_neff"}})
def publish_artifact(body: PublishRequest, request: Request) -> JSONResponse:
    """Publish files compiled elsewhere (e.g. a host's libneuronxla cache) under the spec's key.
    The files are uploaded blobs; every NEFF among them is validated first."""
    outcome = publish.publish(context(request), body, caller(request))
    return JSONResponse(outcome.body, status_code=outcome.status_code)
