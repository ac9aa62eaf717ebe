"""Bearer-token authentication: each route declares the scope it needs, and every route that
touches a namespace's jobs, artifacts or events checks the token may act in it.

`require("read")` etc. are FastAPI dependencies; on success they put the token's `Grant` (its
name, scope and namespaces) on `request.state.grant`, and note when the token was last used (at
most once a minute per token). Jobs and hits record the grant's name. With auth turned off
(`make run` only) every request is the caller "anonymous" with every scope and namespace.

A route checks a namespace with `grant(request).check(namespace)` (403 naming it) once it knows
which namespace a request is about: the spec's for compile, lookup and publish; the stored
row's for a job or artifact named in the path. Listings keep to `grant.visible()`.

NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN is an admin token for setting up: it is refused (401) once any
admin token exists in the database, and the service logs, once, that it was ignored and why.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Request, params
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from neffcache import tokens
from neffcache.db.models import utcnow
from neffcache.errors import Forbidden, Unauthorized
from neffcache.service.routes.deps import context

log = logging.getLogger("neffcache.service.auth")
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Grant:
    """What the request's token may do: its name (recorded on jobs and hits), scope and namespaces."""

    caller: str
    scope: str
    namespaces: tuple[str, ...]

    @property
    def every_namespace(self) -> bool:
        return tokens.ALL_NAMESPACES in self.namespaces

    def allows(self, namespace: str) -> bool:
        return tokens.namespace_allows(self.namespaces, namespace)

    def check(self, namespace: str) -> None:
        """Returns if the token may act in `namespace`; else 403 naming it."""
        if not self.allows(namespace):
            raise Forbidden(f"namespace {namespace!r}: token {self.caller!r} may act only in "
                            f"{', '.join(repr(n) for n in self.namespaces)}", namespace=namespace)

    def visible(self) -> Sequence[str] | None:
        """The namespaces a listing keeps to; None: every one."""
        return None if self.every_namespace else self.namespaces

    def limit(self, query: Any, column: Any) -> Any:
        """`query` kept to this token's namespaces (by `column`); unchanged for every namespace."""
        visible = self.visible()
        return query if visible is None else query.where(column.in_(visible))


UNRESTRICTED = Grant(ANONYMOUS, "admin", (tokens.ALL_NAMESPACES,))
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


Remembered = tuple[Grant, datetime | None]  # a grant and its token's expiry, as kept in ctx.grants


def _checked(remembered: Remembered, now: datetime) -> Grant:
    """The grant, unless its token has expired (checked on every request, remembered or not)."""
    found, expires_at = remembered
    if expires_at is not None and expires_at <= now:
        raise Unauthorized(f"Authorization: the token {found.caller!r} expired at "
                           f"{expires_at.isoformat(timespec='seconds')}")
    return found


def _remembered(ctx: Any, token: str) -> Remembered | None:
    """A database token's grant read in the last hot_cache_s (service.memo), by its sha256. A
    revocation drops it in every API process at once (service.invalidation); hot_cache_s is how
    long it is still taken when that announcement is lost. Never the bootstrap token."""
    if tokens.matches(token, ctx.settings.bootstrap_admin_token):
        return None
    remembered: Remembered | None = ctx.grants.get(tokens.hash_token(token))
    return remembered


def grant_in_memory(ctx: Any, token: str | None, scope: str) -> Grant | None:
    """The grant `require(scope)` gives, when that needs neither the database nor a refusal:
    authentication off, or a remembered token that has not expired and holds `scope`. None:
    the route's own dependency decides (and says why it refuses)."""
    if not ctx.settings.auth_required:
        return UNRESTRICTED
    remembered = _remembered(ctx, token) if token else None
    if remembered is None:
        return None
    found, expires_at = remembered
    if (expires_at is not None and expires_at <= utcnow()) or not tokens.scope_allows(found.scope, scope):
        return None
    return found


def _identify(request: Request, token: str) -> Grant:
    """The token's grant, from the database (run in a thread); raises Unauthorized saying why
    it is refused. A database token's grant is then remembered, and its last use recorded."""
    ctx = context(request)
    now = utcnow()
    if tokens.matches(token, ctx.settings.bootstrap_admin_token):
        with ctx.db.session() as session:
            _bootstrap(request).check(session)
        return Grant(BOOTSTRAP_ADMIN, "admin", (tokens.ALL_NAMESPACES,))
    read_in = ctx.grants.epoch  # a revocation announced while this reads: not kept
    with ctx.db.session() as session:
        row = tokens.find_token(session, token)
        if row is None:
            raise Unauthorized("Authorization: the token is unknown or revoked")
        remembered = (Grant(row.name, row.scope, tuple(row.namespaces)), row.expires_at)
        if not tokens.expired(row, now):
            tokens.record_use(row, now)  # committed as the session ends
    ctx.grants.put(tokens.hash_token(token), remembered, read_in)
    return _checked(remembered, now)


def require(scope: str) -> params.Depends:
    async def dependency(request: Request,
                         credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if not context(request).settings.auth_required:
            request.state.grant = UNRESTRICTED
            return
        if credentials is None:
            raise Unauthorized("Authorization: a bearer token is required (NEFFCACHE_TOKEN)")
        # A remembered grant is answered here, in the event loop: no thread, no database.
        remembered = _remembered(context(request), credentials.credentials)
        if remembered is not None:
            found = _checked(remembered, utcnow())
        else:
            found = await run_in_threadpool(_identify, request, credentials.credentials)
        if not tokens.scope_allows(found.scope, scope):
            raise Forbidden(f"token {found.caller!r} has scope {found.scope!r}; this needs {scope!r}", needed=scope)
        request.state.grant = found

    dependency.__name__ = f"require_{scope}"
    return Depends(dependency)


def grant(request: Request) -> Grant:
    """The request's grant (set by the route's `require` dependency)."""
    found: Grant = request.state.grant
    return found


READ = require("read")
WRITE = require("write")
PUBLISH = require("publish")
ADMIN = require("admin")
