"""Model blobs: content-addressed uploads, verified by the server while streaming; downloads
verified the same way (service.streaming)."""

from __future__ import annotations

import logging
import tempfile

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from neffcache.db.models import Blob, utcnow
from neffcache.digests import digest_of
from neffcache.errors import InvalidParameter, NotFound, TooLarge
from neffcache.object_deletion import ensure_stored
from neffcache.service.auth import READ, WRITE
from neffcache.service.compile_decisions import touch_blob
from neffcache.service.context import ServiceContext
from neffcache.service.routes.deps import context, parse_digest
from neffcache.service.streaming import object_response

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/blobs", tags=["blobs"])
SPOOL_IN_MEMORY = 8 * 1024 * 1024


def _known_size(ctx: ServiceContext, digest: str) -> int | None:
    """Size of a blob that is both recorded and still in the store, else None."""
    with ctx.db.session() as session:
        row = session.get(Blob, digest)
        size = row.size if row else None
    if size is not None and ctx.store.stat(parse_digest(digest)) is None:
        return None  # recorded but gone from the store: take the upload again
    return size


def _record(ctx: ServiceContext, digest: str, size: int) -> None:
    """The blob's row, made or marked as just used (the GC keeps used blobs)."""
    with ctx.db.session() as session:
        touch_blob(session, digest)
        if session.get(Blob, digest) is None:
            session.add(Blob(digest=digest, size=size, last_used_at=utcnow()))


def _too_large(limit: int) -> TooLarge:
    return TooLarge(f"body: upload exceeds the limit of {limit} bytes (NEFFCACHE_MAX_UPLOAD_BYTES)", limit=limit)


@router.put("/{digest}", status_code=201, dependencies=[WRITE], responses={200: {"description": "already present"}})
async def put_blob(digest: str, request: Request) -> JSONResponse:
    """Upload a model blob; the server recomputes sha256 while streaming and keeps nothing on mismatch.
    A stored copy is verified, and replaced when corrupt (201, `"repaired": true`)."""
    ctx = context(request)
    hex_digest = parse_digest(digest)
    limit = ctx.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidParameter(f"Content-Length: {declared!r} is not a byte count")
        if int(declared) > limit:
            raise _too_large(limit)
    # No shortcut when the blob is already stored: the store verifies its copy against these
    # bytes and replaces it when corrupt, which is how a damaged blob is repaired.
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(limit)
            spool.write(chunk)
        spool.seek(0)
        result = await run_in_threadpool(ctx.store.put, spool, hex_digest, limit)
        await run_in_threadpool(_record, ctx, digest, result.size)

        def put_again() -> object:
            spool.seek(0)
            return ctx.store.put(spool, hex_digest, limit)

        # The row is committed: if the GC was deleting these very bytes as we found them stored,
        # store them again (neffcache.object_deletion).
        await run_in_threadpool(ensure_stored, ctx.db, ctx.store, {hex_digest: put_again})
    if result.repaired:
        ctx.metrics.corrupt_object("upload")
        log.warning("blob %s: the stored copy was corrupt; replaced by this upload", digest)
    body = {"digest": digest, "size": result.size, "created": result.created, "repaired": result.repaired}
    return JSONResponse(body, status_code=201 if result.created else 200)


@router.get("/{digest}", dependencies=[READ], responses={307: {"description": "presigned URL (S3)"}})
def get_blob(digest: str, request: Request) -> Response:
    """Download a blob (a model graph): the bytes, or a 307 to a presigned URL on S3."""
    ctx = context(request)
    size = _known_size(ctx, digest_of(parse_digest(digest)))
    if size is None:
        raise NotFound(f"blob {digest} is not stored")
    return object_response(ctx, parse_digest(digest), parse_digest(digest)[:16] + ".blob", size, found_by="blob",
                           what=f"blob {digest}")


@router.head("/{digest}", dependencies=[READ])
def head_blob(digest: str, request: Request) -> Response:
    """200 when the blob is stored (its size in Content-Length), 404 when not."""
    size = _known_size(context(request), digest_of(parse_digest(digest)))
    if size is None:
        return Response(status_code=404)
    return Response(status_code=200, headers={"Content-Length": str(size)})
