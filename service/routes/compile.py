"""Compile and lookup: the two questions CI and pods ask of the cache."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from neffcache.service import cache
from neffcache.service.auth import READ, WRITE
from neffcache.service.routes.deps import caller, context
from neffcache.spec import CompileRequest, LookupRequest

router = APIRouter(prefix="/v1", tags=["cache"])


@router.post(
    "/compile",
    dependencies=[WRITE],
    responses={
        200: {"description": "hit (artifact) or a remembered compile_error (job)"},
        202: {"description": "queued: a new job, or the key's running job (deduplicated)"},
        409: {"description": "blob_missing: upload the model first"},
        422: {"description": "the spec is invalid or its toolchain cannot be resolved"},
    },
)
def compile_spec(body: CompileRequest, request: Request) -> JSONResponse:
    outcome = cache.submit_compile(context(request), body.spec, body.force, caller(request), body.annotations)
    return JSONResponse(outcome.body, status_code=outcome.status_code)


@router.post(
    "/lookup", dependencies=[READ], responses={404: {"description": "miss, with the key and the nearest manifests"}}
)
def lookup_spec(body: LookupRequest, request: Request) -> dict[str, Any]:
    return cache.lookup(context(request), body.spec, caller(request)).body
