"""Compile and lookup: the two questions CI and pods ask of the cache."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from neffcache.errors import BlobMissing, Forbidden, NotFound
from neffcache.service import cache
from neffcache.service.auth import READ, WRITE, grant
from neffcache.service.errors import KEY_ERRORS, error_responses
from neffcache.service.routes.deps import caller, context
from neffcache.spec import CompileRequest, LookupRequest

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
def compile_spec(body: CompileRequest, request: Request) -> JSONResponse:
    grant(request).check(body.spec.namespace)
    outcome = cache.submit_compile(context(request), body.spec, body.force, caller(request), body.annotations)
    return JSONResponse(outcome.body, status_code=outcome.status_code)


@router.post("/lookup", dependencies=[READ], responses=error_responses(NotFound, Forbidden, *KEY_ERRORS))
def lookup_spec(body: LookupRequest, request: Request) -> dict[str, Any]:
    grant(request).check(body.spec.namespace)
    return cache.lookup(context(request), body.spec, grant(request)).body
