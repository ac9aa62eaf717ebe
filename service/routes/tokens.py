"""Token listing for admins (tokens are created and revoked with `neffcache-admin`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from neffcache import tokens
from neffcache.db.models import ApiToken
from neffcache.service.auth import ADMIN
from neffcache.service.routes.deps import context
from neffcache.service.views import iso

router = APIRouter(prefix="/v1", tags=["tokens"], dependencies=[ADMIN])


def _token_view(t: ApiToken) -> dict[str, Any]:
    return {"name": t.name, "scope": t.scope, "namespaces": t.namespaces, "created_at": iso(t.created_at),
            "revoked_at": iso(t.revoked_at), "expires_at": iso(t.expires_at), "last_used_at": iso(t.last_used_at)}


@router.get("/tokens")
def list_tokens(request: Request) -> dict[str, Any]:
    with context(request).db.session() as session:
        return {"tokens": [_token_view(t) for t in tokens.list_tokens(session)]}
