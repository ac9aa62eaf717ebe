"""One log line per request, and its request id.

The id is the caller's X-Request-Id when it looks like one (neffcache.logs.accepted_request_id),
else a new one; it is answered in the X-Request-Id header, is in context while the request is
handled (every line it logs carries it; a job it creates records it, so the worker's lines do
too), and ends the request's line: method, path, status, duration, and the token's name
(`caller`: the grant the route's dependency or the hit lane put in the request's state; absent
when the request carried no accepted token). It replaces uvicorn's access log.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from neffcache import logs
from neffcache.service.metrics import ServiceMetrics

log = logging.getLogger("neffcache.service.requests")
HEADER = b"x-request-id"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class RequestLog:
    """Outermost: its duration is the whole answer's, and it sees the status of every answer,
    the error catcher's 500s included; it counts them by status (neffcache_responses_total)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = logs.accepted_request_id(_header(scope, HEADER))
        state = scope.setdefault("state", {})  # the request's state: auth puts its grant there
        started = time.perf_counter()
        status = 500  # what the server answers when the app fails before starting a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (HEADER, request_id.encode())]}
            await send(message)

        with logs.bound(request=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                self.metrics.response(status)
                self._line(scope, state, status, time.perf_counter() - started, request_id)

    @staticmethod
    def _line(scope: Scope, state: dict[str, Any], status: int, seconds: float, request_id: str) -> None:
        grant = state.get("grant")
        caller = getattr(grant, "caller", None)
        method, path = scope["method"], scope["path"]
        log.info("%s %s %d %.1f ms%s", method, path, status, seconds * 1000, f" ({caller})" if caller else "",
                 extra=logs.fields(event="request", method=method, path=path, status=status,
                                   duration_ms=round(seconds * 1000, 3), caller=caller, request_id=request_id))
