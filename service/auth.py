"""Bearer-token authentication: each route declares the scope it needs.

`require("read")` etc. are FastAPI dependencies; on success they put the token's name on
`request.state.caller`, which jobs and hits record. With auth turned off (`make run` only)
every request is the caller "anonymous" with every scope.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from neffcache import tokens
from neffcache.errors import Forbidden, Unauthorized
from neffcache.service.routes.deps import context

_bearer = HTTPBearer(auto_error=False, description="a token from `neffcache-admin token create`")
BOOTSTRAP_ADMIN = "bootstrap-admin"


def _identify(request: Request, token: str) -> tuple[str, str] | None:
    ctx = context(request)
    if tokens.matches(token, ctx.settings.bootstrap_admin_token):
        return BOOTSTRAP_ADMIN, "admin"
    with ctx.db.session() as session:
        row = tokens.find_token(session, token)
        return (row.name, row.scope) if row is not None else None


def require(scope: str) -> params.Depends:
    async def dependency(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if not context(request).settings.auth_required:
            request.state.caller = "anonymous"
            return
        if credentials is None:
            raise Unauthorized("Authorization: a bearer token is required (NEFFCACHE_TOKEN)")
        found = await run_in_threadpool(_identify, request, credentials.credentials)
        if found is None:
            raise Unauthorized("Authorization: the token is unknown or revoked")
        name, held = found
        if not tokens.scope_allows(held, scope):
            raise Forbidden(f"token {name!r} has scope {held!r}; this needs {scope!r}", needed=scope)
        request.state.caller = name

    dependency.__name__ = f"require_{scope}"
    return Depends(dependency)


READ = require("read")
WRITE = require("write")
ADMIN = require("admin")
