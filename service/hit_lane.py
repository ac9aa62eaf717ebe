"""The hit lane: warm hits answered before routing, from memory alone.

A pod start storm sends the same few requests over and over: the same lookup body, the same
artifact key, with a token already seen. The routes answer those from memory too
(service.cache.warm_hit), but only after the framework has matched the route among all of the
API's, solved its dependencies and validated the body, which cost several times what the answer
itself costs. This ASGI middleware answers such a request first, when, and only when, the route
would give the same answer without the database:

- POST /v1/lookup or /v1/compile whose body is byte for byte one the route validated and answered
  as a hit (`remember`, kept hot_cache_s), still resolving to the same key (`Resolved.holds`);
- GET /v1/artifacts/{key} of a whole key whose artifact and counts are in memory;
- with a token whose grant is in memory, unexpired, with the route's scope and the namespace
  (service.auth.grant_in_memory).

Anything else, including every refusal, goes on to the routes unchanged (the body it read is
handed on), so there is one place that decides and explains each refusal. The answer is the
route's own: the same functions build it (service.cache), and tests/unit/service/test_hit_lane.py
checks both give the same answer (but for the count that includes the request itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neffcache.digests import is_bare_hex
from neffcache.service import cache
from neffcache.service.auth import Grant, grant_in_memory
from neffcache.service.context import ServiceContext

# The requests the lane may answer, and the scope each route requires.
POSTED = {"/v1/lookup": ("lookup", "read"), "/v1/compile": ("compile", "write")}
ARTIFACTS = "/v1/artifacts/"
# Bodies above this are not remembered (a spec is a few hundred bytes; this bounds memory).
MAX_REMEMBERED_BODY = 16 * 1024
LANE = "lane"  # the `source` of its answers in neffcache_hits_served


@dataclass(frozen=True)
class RememberedBody:
    """What a request body was validated and resolved to by its route."""

    namespace: str
    resolved: cache.Resolved


def remember(ctx: ServiceContext, kind: str, body: bytes, namespace: str, resolved: cache.Resolved) -> None:
    """Called by a route that answered `body` as a warm hit: the lane answers it from now on."""
    if len(body) <= MAX_REMEMBERED_BODY:
        ctx.warm_bodies.put((kind, body), RememberedBody(namespace, resolved))


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" else None
    return None


async def _read_body(receive: Receive) -> tuple[list[Message], bytes | None]:
    """The request's messages as received, and its whole body; None when it is larger than any
    remembered body (the lane then stops reading and hands on what it has)."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        size += len(message.get("body", b""))
        if size > MAX_REMEMBERED_BODY:
            return messages, None
        if not message.get("more_body", False):
            return messages, b"".join(m.get("body", b"") for m in messages)


def _replaying(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives `messages` first, then what `receive` gives."""
    pending = list(messages)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


def _note_grant(scope: Scope, grant: Grant) -> None:
    """The grant of a request the lane answers, where the route's dependency puts it (the
    request's state): the request's log line names its token (service.request_log)."""
    scope.setdefault("state", {})["grant"] = grant


class HitLane:
    def __init__(self, app: ASGIApp, ctx: ServiceContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if method == "POST" and path in POSTED:
            kind, needed = POSTED[path]
            grant = grant_in_memory(self.ctx, _bearer(scope), needed)
            if grant is not None:
                messages, body = await _read_body(receive)
                answer = self._posted(kind, body, grant) if body is not None else None
                if answer is not None:
                    _note_grant(scope, grant)
                    await JSONResponse(answer.body, status_code=answer.status_code)(scope, receive, send)
                    return
                receive = _replaying(messages, receive)
        elif method == "GET" and path.startswith(ARTIFACTS):
            key = path[len(ARTIFACTS):]
            grant = grant_in_memory(self.ctx, _bearer(scope), "read")
            view = cache.warm_artifact(self.ctx, key, grant, LANE) if grant is not None and is_bare_hex(key) else None
            if view is not None and grant is not None:
                _note_grant(scope, grant)
                await JSONResponse(view)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _posted(self, kind: str, body: bytes, grant: Grant) -> Any:
        remembered: RememberedBody | None = self.ctx.warm_bodies.get((kind, body))
        if remembered is None or not grant.allows(remembered.namespace) or not remembered.resolved.holds(self.ctx):
            return None
        return cache.warm_hit(self.ctx, kind, remembered.resolved, grant.caller, LANE)
