"""Bearer-token authentication: each route declares the scope it needs.

`require("read")` etc. are FastAPI dependencies; on success they put the token's name on
`request.state.caller`, which jobs and hits record, and note when the token was last used (at
most once a minute per token). With auth turned off (`make run` only) every request is the
caller "anonymous" with every scope.

NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN is an admin token for setting up: it is refused (401) once any
admin token exists in the database, and the service logs, once, that it was ignored and why.
"""

from __future__ import annotations

import logging
import threading
from typing import Annotated

from fastapi import Depends, Request, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from neffcache import tokens
from neffcache.db.models import utcnow
from neffcache.errors import Forbidden, Unauthorized
from neffcache.service.routes.deps import context

log = logging.getLogger("neffcache.service.auth")
_bearer = HTTPBearer(auto_error=False, description="a token from `neffcache-admin token create`")
BOOTSTRAP_ADMIN = tokens.BOOTSTRAP_ADMIN
BOOTSTRAP_REFUSED = ("Authorization: the bootstrap admin token (NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN) is no longer "
                     "accepted: an admin token exists in the database; use that")


class _Bootstrap:
    """Per app: whether the bootstrap token is refused. Once an admin token exists it is for
    good (rows are kept when revoked), so the database is asked only until then."""

    def __init__(self) -> None:
        self.refused = False
        self.lock = threading.Lock()

    def check(self, session: Session) -> None:
        """Returns if the bootstrap token is still accepted; else raises Unauthorized."""
        if not self.refused:
            if not tokens.admin_tokens_exist(session):
                return
            with self.lock:
                first, self.refused = not self.refused, True
            if first:
                log.warning("NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN was ignored (a request carried it; refused with 401): "
                            "admin tokens exist in the database, so it is no longer accepted. Use an admin "
                            "token from `neffcache-admin token create --scope admin` and unset the setting.")
        raise Unauthorized(BOOTSTRAP_REFUSED)


_bootstrap_lock = threading.Lock()


def _bootstrap(request: Request) -> _Bootstrap:
    state = request.app.state
    with _bootstrap_lock:
        if not hasattr(state, "auth_bootstrap"):
            state.auth_bootstrap = _Bootstrap()
        bootstrap: _Bootstrap = state.auth_bootstrap
        return bootstrap


def _identify(request: Request, token: str) -> tuple[str, str]:
    """(caller name, scope) of the token; raises Unauthorized saying why it is refused."""
    ctx = context(request)
    now = utcnow()
    with ctx.db.session() as session:
        if tokens.matches(token, ctx.settings.bootstrap_admin_token):
            _bootstrap(request).check(session)
            return BOOTSTRAP_ADMIN, "admin"
        row = tokens.find_token(session, token)
        if row is None:
            raise Unauthorized("Authorization: the token is unknown or revoked")
        if tokens.expired(row, now):
            assert row.expires_at is not None
            raise Unauthorized(f"Authorization: the token {row.name!r} expired at "
                               f"{row.expires_at.isoformat(timespec='seconds')}")
        tokens.record_use(row, now)  # committed as the session ends
        return row.name, row.scope


def require(scope: str) -> params.Depends:
    async def dependency(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if not context(request).settings.auth_required:
            request.state.caller = "anonymous"
            return
        if credentials is None:
            raise Unauthorized("Authorization: a bearer token is required (NEFFCACHE_TOKEN)")
        name, held = await run_in_threadpool(_identify, request, credentials.credentials)
        if not tokens.scope_allows(held, scope):
            raise Forbidden(f"token {name!r} has scope {held!r}; this needs {scope!r}", needed=scope)
        request.state.caller = name

    dependency.__name__ = f"require_{scope}"
    return Depends(dependency)


READ = require("read")
WRITE = require("write")
ADMIN = require("admin")
