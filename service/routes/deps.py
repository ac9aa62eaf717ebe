"""Small pieces the routes share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from fastapi import Request

from neffcache.errors import InvalidDigest
from neffcache.spec import is_digest
from service.context import ServiceContext


def context(request: Request) -> ServiceContext:
    return request.app.state.ctx


def caller(request: Request) -> str | None:
    """The name the request is attributed to (hits, jobs); set by authentication when enabled."""
    return getattr(request.state, "caller", None)


def parse_digest(digest: str) -> str:
    """'sha256:<hex>' -> '<hex>', or 400 naming the value."""
    if not is_digest(digest):
        raise InvalidDigest(f"digest: {digest[:80]!r} is not of the form sha256:<64 lowercase hex>")
    return digest.split(":", 1)[1]


def stream_chunks(stream: BinaryIO, size: int = 1024 * 1024) -> Iterator[bytes]:
    """Yield a stored object in chunks and close it, for a StreamingResponse."""
    with stream:
        while chunk := stream.read(size):
            yield chunk
