"""Tokens for admins: the listing, and revoking one (tokens are created with `neffcache-admin`,
which revokes them too)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from neffcache import tokens
from neffcache.db.models import ApiToken
from neffcache.errors import NotFound
from neffcache.service.auth import ADMIN
from neffcache.service.errors import error_responses
from neffcache.service.invalidation import announcer
from neffcache.service.routes.deps import context
from neffcache.service.views import iso
from neffcache.spec import Text

router = APIRouter(prefix="/v1", tags=["tokens"], dependencies=[ADMIN])


def _token_view(t: ApiToken) -> dict[str, Any]:
    return {"name": t.name, "scope": t.scope, "namespaces": t.namespaces, "created_at": iso(t.created_at),
            "revoked_at": iso(t.revoked_at), "expires_at": iso(t.expires_at), "last_used_at": iso(t.last_used_at)}


@router.get("/tokens")
def list_tokens(request: Request) -> dict[str, Any]:
    with context(request).db.session() as session:
        return {"tokens": [_token_view(t) for t in tokens.list_tokens(session)]}


@router.delete("/tokens/{name}", responses=error_responses(NotFound))
def revoke_token(name: Annotated[Text, Path(description="the token's name")], request: Request) -> dict[str, Any]:
    """Revoke a token, as `neffcache-admin token revoke` does: every API process refuses it from
    now on (within hot_cache_s where Redis cannot tell them). The token's row, revoked."""
    ctx = context(request)
    with ctx.db.session() as session:
        tokens.revoke_token(session, name, announcer(ctx))
        row = session.get(ApiToken, name)
        assert row is not None
        return _token_view(row)
