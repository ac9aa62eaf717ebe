"""Small pieces the routes share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from fastapi import Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from neffcache.digests import DIGEST_FORM, bare_hex, is_digest
from neffcache.errors import CorruptObject, InvalidDigest
from neffcache.service.context import ServiceContext


def context(request: Request) -> ServiceContext:
    return request.app.state.ctx


def caller(request: Request) -> str | None:
    """The name the request is attributed to (hits, jobs); set by authentication when enabled."""
    return getattr(request.state, "caller", None)


def parse_digest(digest: str) -> str:
    """'sha256:<hex>' -> '<hex>', or 400 naming the value."""
    if not is_digest(digest):
        raise InvalidDigest(f"digest: {digest[:80]!r} is not of the form {DIGEST_FORM}")
    return bare_hex(digest)


def object_response(ctx: ServiceContext, hex_digest: str, name: str, size: int,
                    missing: str) -> Response:
    """A stored object for download: a 307 to a presigned URL where the store can sign one
    (S3), else the bytes streamed from the folder store. `missing` is the error detail if the
    object is gone."""
    headers = {"X-Neffcache-Sha256": hex_digest, "X-Neffcache-Size": str(size)}
    url = ctx.store.presigned_url(hex_digest, ctx.settings.presign_expiry_s, filename=name)
    if url is not None:
        return RedirectResponse(url, status_code=307, headers=headers)
    stream = ctx.store.open(hex_digest)
    if stream is None:
        raise CorruptObject(missing)
    headers.update({"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{name}"'})
    return StreamingResponse(stream_chunks(stream), media_type="application/octet-stream", headers=headers)


def stream_chunks(stream: BinaryIO, size: int = 1024 * 1024, skip: int = 0) -> Iterator[bytes]:
    """Yield a stored object in chunks (after its first `skip` bytes) and close it."""
    with stream:
        while skip > 0 and (dropped := stream.read(min(skip, size))):
            skip -= len(dropped)
        while chunk := stream.read(size):
            yield chunk
