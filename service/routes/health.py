"""Liveness, readiness and Prometheus metrics (no authentication on any of them)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from neffcache.errors import NotReady
from neffcache.service.errors import error_responses
from neffcache.service.routes.deps import context

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(NotReady))
def readyz(request: Request) -> JSONResponse:
    """Database, Redis and object store all answer; 503 naming the ones that do not."""
    ctx = context(request)
    checks: dict[str, Any] = {}

    def probe(name: str, fn: Any) -> None:
        try:
            fn()
            checks[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks[name] = f"{type(exc).__name__}: {exc}"[:300]

    def database() -> None:
        with ctx.db.session() as session:
            session.execute(text("SELECT 1"))

    probe("database", database)
    probe("redis", ctx.redis.ping)
    probe("storage", ctx.store.check)
    failing = [name for name, state in checks.items() if state != "ok"]
    if failing:
        detail = "; ".join(f"{name}: {checks[name]}" for name in failing)
        return JSONResponse({"error": "not_ready", "detail": detail, "checks": checks}, status_code=503)
    return JSONResponse({"status": "ready", "checks": checks})


@router.get("/metrics", response_class=PlainTextResponse,
            responses={200: {"description": "Prometheus text exposition format"}})
def metrics(request: Request) -> Response:
    return Response(context(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
