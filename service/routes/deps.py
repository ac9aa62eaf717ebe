"""Small pieces the routes share."""

from __future__ import annotations

from fastapi import Request

from neffcache.digests import DIGEST_FORM, bare_hex, is_digest
from neffcache.errors import InvalidDigest
from neffcache.service.context import ServiceContext


def context(request: Request) -> ServiceContext:
    return request.app.state.ctx


def caller(request: Request) -> str | None:
    """The name the request is attributed to (hits, jobs); set by authentication."""
    found = getattr(request.state, "grant", None)
    return found.caller if found is not None else None


def parse_digest(digest: str) -> str:
    """'sha256:<hex>' -> '<hex>', or 400 naming the value."""
    if not is_digest(digest):
        raise InvalidDigest(f"digest: {digest[:80]!r} is not of the form {DIGEST_FORM}")
    return bare_hex(digest)
