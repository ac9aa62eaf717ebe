"""Compile and lookup: the two questions CI and pods ask of the cache."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from neffcache.errors import BlobMissing, Forbidden, NotFound
from neffcache.service import cache, compile_decisions, hit_lane
from neffcache.service.auth import READ, WRITE, grant
from neffcache.service.errors import KEY_ERRORS, error_responses
from neffcache.service.routes.deps import caller, context
from neffcache.spec import CompileRequest, CompileSpec, LookupRequest

router = APIRouter(prefix="/v1", tags=["cache"])


@router.post(
    "/compile",
    dependencies=[WRITE],
    responses=error_responses(
        BlobMissing, Forbidden, *KEY_ERRORS,
        into={
            200: {"description": "hit (artifact) or a remembered compile_error (job)"},
            202: {"description": "queued: a new job, or the key's running job (deduplicated)"},
        },
    ),
)
async def compile_spec(body: CompileRequest, request: Request) -> JSONResponse:
    grant(request).check(body.spec.namespace)
    outcome = await _warm_hit(request, "compile", body.spec)
    if outcome is None:
        outcome = await run_in_threadpool(compile_decisions.submit_compile, context(request), body.spec, body.force,
                                          caller(request), body.annotations)
    return JSONResponse(outcome.body, status_code=outcome.status_code)


@router.post("/lookup", dependencies=[READ], response_model=dict[str, Any],
             responses=error_responses(NotFound, Forbidden, *KEY_ERRORS))
async def lookup_spec(body: LookupRequest, request: Request) -> JSONResponse:
    grant(request).check(body.spec.namespace)
    outcome = await _warm_hit(request, "lookup", body.spec)
    if outcome is None:
        outcome = await run_in_threadpool(cache.lookup, context(request), body.spec, grant(request))
    return JSONResponse(outcome.body, status_code=outcome.status_code)


async def _warm_hit(request: Request, kind: str, spec: CompileSpec) -> cache.Outcome | None:
    """A hit answered from memory, here in the event loop (service.cache.warm_hit), its body then
    remembered for the hit lane; None: the database path answers, in a thread."""
    ctx = context(request)
    resolved = cache.resolve_in_memory(ctx, spec)
    outcome = cache.warm_hit(ctx, kind, resolved, caller(request)) if resolved is not None else None
    if outcome is not None and resolved is not None:
        hit_lane.remember(ctx, kind, await request.body(), spec.namespace, resolved)
    return outcome
