"""The FastAPI application: built by create_app(settings), which connects to nothing."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from anyio import to_thread
from fastapi import FastAPI

from neffcache import errors as domain
from neffcache import logs
from neffcache.service import errors
from neffcache.service.context import ServiceContext
from neffcache.service.hit_lane import HitLane
from neffcache.service.request_log import RequestLog
from neffcache.service.routes import (
    artifacts,
    blobs,
    compile,
    health,
    jobs,
    pins,
    prewarm,
    stats,
    storage,
    tokens,
    toolchains,
    ui,
    workers,
)
from neffcache.settings import Settings

log = logging.getLogger("neffcache.service")
# The responses of the routers whose routes do not declare their own (each route declares its
# domain errors with errors.error_responses; errors.document_errors adds those of its shape:
# authentication, parameters, body). A route's own entry for a status wins over these.
ROUTER_RESPONSES: dict[str, dict[int | str, Any]] = {
    blobs.__name__: errors.error_responses(
        domain.InvalidDigest, domain.DigestMismatch, domain.NotFound, domain.TooLarge, domain.CorruptObject,
        domain.StorageError,
        into={200: {"description": "the blob's bytes (GET, folder store)",
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
    ),
}


class ServiceHeader:
    """Every answer carries X-Neffcache-Version: the client tells this service from another web
    server on the same address by it (`no neffcache service at URL`, exit 6)."""

    def __init__(self, app: Any, version: str) -> None:
        self.app = app
        self.header = (b"x-neffcache-version", version.encode())

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_marked(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_marked)


def create_app(settings: Settings | None = None, ctx: ServiceContext | None = None) -> FastAPI:
    context = ctx or ServiceContext.from_settings(settings or Settings())
    settings = context.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if not settings.auth_required:
            log.warning("AUTHENTICATION IS OFF (NEFFCACHE_AUTH_REQUIRED=false): anyone who can reach "
                        "this port can compile, download and cancel. Use this only on a single-user machine.")
        # As many request threads as the database pool has connections for them (settings.api_threads).
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        context.events.start()
        context.invalidations.start()
        yield
        context.close()

    app = FastAPI(
        title="neffcache",
        version="0.1.0",
        description="Compile farm and artifact cache for AWS Neuron. Every error is "
        '`{"error": "<stable code>", "detail": "<message>"}`.',
        lifespan=lifespan,
        # `/v1/jobs/` (an empty id) is a 404 like any path the API lacks, not an undocumented 307
        # to `/v1/jobs`: every route is written without a trailing slash.
        redirect_slashes=False,
    )
    app.state.ctx = context
    app.add_middleware(HitLane, ctx=context)  # innermost: inside the error catcher and the version header
    errors.install(app)
    app.add_middleware(ServiceHeader, version=app.version)
    # Outermost: every answer's status and duration, and its request id.
    app.add_middleware(RequestLog, metrics=context.metrics)
    for module in (blobs, compile, prewarm, jobs, artifacts, pins, stats, storage, workers, toolchains, tokens, health,
                   ui):
        app.include_router(module.router, responses=ROUTER_RESPONSES.get(module.__name__))
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory service.app:app_from_env`: settings from the environment. Each
    uvicorn worker process builds its app here, so this is where its logging is set up."""
    settings = Settings()
    logs.configure(settings.log_format)
    return create_app(settings)
