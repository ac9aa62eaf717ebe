"""Every error leaves as {"error": <stable code>, "detail": <message naming the field>}.

Bad input never becomes a 500: validation errors are mapped to the domain code of the field
at fault, and anything unexpected is logged here and answered without a traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from neffcache import errors
from neffcache.errors import NeffcacheError

log = logging.getLogger(__name__)

# The last named part of the failing field's location picks the code.
FIELD_ERRORS: dict[str, type[NeffcacheError]] = {
    "target": errors.UnknownTarget,
    "dtype": errors.InvalidDtype,
    "shape": errors.InvalidShape,
    "flags": errors.InvalidFlags,
}


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


def _error_for(err: dict[str, Any]) -> NeffcacheError:
    loc = tuple(err.get("loc", ()))
    path = _field_path(loc)
    message = err.get("msg", "invalid")
    if "input" in err and err.get("type") in ("literal_error", "string_pattern_mismatch", "enum"):
        message = f"{message} (got {err['input']!r})"
    detail = f"{path}: {message}"
    if err.get("type") == "json_invalid":
        return errors.MalformedRequest(f"request body is not valid JSON: {err.get('ctx', {}).get('error', message)}")
    if loc and loc[0] in ("query", "path"):
        return errors.InvalidParameter(detail)
    named = [p for p in loc if isinstance(p, str)]
    if named[-2:] == ["compiler", "name"]:
        return errors.UnknownCompiler(detail)
    for part in reversed(named):
        if part in FIELD_ERRORS:
            return FIELD_ERRORS[part](detail)
    return errors.InvalidSpec(detail)


def error_response(exc: NeffcacheError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.code == "unauthorized" else None
    return JSONResponse(exc.to_body(), status_code=exc.http_status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(NeffcacheError)
    async def _domain(_: Request, exc: NeffcacheError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        domain = _error_for(problems[0]) if problems else errors.InvalidSpec("invalid request")
        if len(problems) > 1:
            domain.extra["problems"] = [f"{_field_path(tuple(p.get('loc', ())))}: {p.get('msg')}" for p in problems]
        return error_response(domain)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": code, "detail": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": "internal_error", "detail": f"internal error ({type(exc).__name__}); see the service log"},
            status_code=500,
        )
