"""Every error leaves as {"error": <stable code>, "detail": <message naming the field>}.

Bad input never becomes a 500: validation errors are mapped to the domain code of the field
at fault, the framework's own refusals (no such route, a method the route lacks, a body that is
not JSON) get codes of the same table, and anything unexpected is logged here and answered
without a traceback, inside the app: the exception never reaches the HTTP server, which would
otherwise close the connection under the next request a client sends on it.

The OpenAPI document describes the same answers: `error_responses(*classes)` builds a route's
`responses=` from the error classes it can raise (each class's `http_status` and `code`, the
table the handlers answer from), and `document_errors` adds to every operation the ones that
follow from its shape: 401/403 where it needs a token, 400 where it takes parameters, 400/422
where it takes a body, 500 everywhere.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
# What a request body that fails validation can be answered with (see _error_for).
BODY_ERRORS: tuple[type[NeffcacheError], ...] = (
    errors.MalformedRequest, errors.InvalidSpec, errors.UnknownCompiler, *FIELD_ERRORS.values(),
)
# What turning a valid spec into its key can raise (service.cache.resolve_key: the toolchain
# resolved, the flags canonicalised).
KEY_ERRORS: tuple[type[NeffcacheError], ...] = (
    errors.InvalidSpec, errors.InvalidFlags, errors.ToolchainAmbiguous, errors.ToolchainUnavailable,
    errors.ToolchainMismatch,
)
# What reading a stored object (a file, a log) can be answered with: missing or corrupt in the
# store, or the store not answering.
STORE_ERRORS: tuple[type[NeffcacheError], ...] = (errors.CorruptObject, errors.StorageError)
# The framework's own refusals, by the status it gives them.
FRAMEWORK_ERRORS: dict[int, type[NeffcacheError]] = {
    400: errors.MalformedRequest,  # a body that cannot even be decoded (not UTF-8)
    404: errors.NotFound,  # no such route
    405: errors.MethodNotAllowed,  # a method the route does not have
}
ERROR_SCHEMA_REF = "#/components/schemas/ErrorBody"


class ErrorBody(BaseModel):
    """The body of every error response. Some codes add fields (e.g. `not_found` from a lookup:
    `key` and `nearest`; `ambiguous_prefix`: `candidates` and `matches`; several invalid fields:
    `problems`)."""

    model_config = ConfigDict(extra="allow", title="ErrorBody")

    error: str = Field(description="the stable code (the README's table); clients switch on it")
    detail: str = Field(description="what was wrong, naming the field or object at fault")


def _codes_of(entry: dict[str, Any]) -> list[str]:
    """The codes an _error_entry documents ([] for any other response)."""
    schema = entry.get("content", {}).get("application/json", {}).get("schema", {})
    parts = schema.get("allOf", [])
    if len(parts) != 2 or parts[0] != {"$ref": ERROR_SCHEMA_REF}:
        return []
    return list(parts[1]["properties"]["error"]["enum"])


def _error_entry(status: int, codes: list[str]) -> dict[str, Any]:
    return {
        "description": f"{HTTPStatus(status).phrase}: " + ", ".join(f"`{c}`" for c in codes),
        "content": {"application/json": {"schema": {
            "allOf": [{"$ref": ERROR_SCHEMA_REF}, {"properties": {"error": {"enum": codes}}}],
        }}},
    }


def error_responses(*classes: type[NeffcacheError], into: dict[int | str, Any] | None = None) -> dict[int | str, Any]:
    """`responses=` for a route that can answer with these error classes: one entry per status
    (from each class's `http_status`), its body ErrorBody with `error` one of their codes. With
    `into`, the entries are merged into those responses (codes of one status joined)."""
    out: dict[int | str, Any] = dict(into or {})
    for cls in classes:
        status = cls.http_status
        codes = _codes_of(out.get(status) or {})
        if cls.code not in codes:
            out[status] = _error_entry(status, [*codes, cls.code])
    return out


def operation_errors(operation: dict[str, Any]) -> list[type[NeffcacheError]]:
    """The errors any operation of this shape (as the OpenAPI document has it) can answer with,
    whatever it does: 401/403 when it needs a token, 400 `invalid_parameter` when it takes path,
    query or header parameters, 400/422 when it takes a body; a 500 (logged) on every one."""
    found: list[type[NeffcacheError]] = []
    if operation.get("security"):
        found += [errors.Unauthorized, errors.Forbidden]
    if operation.get("parameters"):
        found.append(errors.InvalidParameter)
    if operation.get("requestBody"):
        found += BODY_ERRORS
    found.append(NeffcacheError)
    return found


def _is_framework_422(entry: dict[str, Any] | None) -> bool:
    schema = (entry or {}).get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Complete an OpenAPI document's responses: to every operation the errors of its shape
    (operation_errors), joined with those its route declared; FastAPI's own 422 for invalid
    parameters goes (they are 400 `invalid_parameter`, an ErrorBody), and ErrorBody is added to
    the schemas. A success declared with a description only is a JSON object (every answer is
    JSON unless its route says otherwise), and an answer to HEAD has no content."""
    for item in schema.get("paths", {}).values():
        for method, operation in item.items():
            responses = operation.get("responses", {})
            if _is_framework_422(responses.get("422")):
                del responses["422"]
            keyed: dict[int | str, Any] = {int(k) if str(k).isdigit() else k: v for k, v in responses.items()}
            merged = error_responses(*operation_errors(operation), into=keyed)
            for status, entry in merged.items():
                if str(status).startswith("2") and "content" not in entry:  # declared with a description only
                    merged[status] = {**entry, "content": {"application/json": {"schema": {"type": "object"}}}}
            if method == "head":  # an answer to HEAD has no body, whatever the status
                merged = {k: {n: v for n, v in entry.items() if n != "content"} for k, entry in merged.items()}
            operation["responses"] = {str(k): merged[k] for k in sorted(merged, key=str)}
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    if "HTTPValidationError" not in json.dumps(schema.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return schema


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
    if loc and loc[0] in ("query", "path", "header"):
        return errors.InvalidParameter(detail)
    named = [p for p in loc if isinstance(p, str)]
    if named[-2:] == ["compiler", "name"]:
        return errors.UnknownCompiler(detail)
    for part in reversed(named):
        if part in FIELD_ERRORS:
            return FIELD_ERRORS[part](detail)
    return errors.InvalidSpec(detail)


class ErrorJSONResponse(JSONResponse):
    """A JSONResponse that renders whatever the detail quotes: text that is not UTF-8 (a lone
    surrogate from the request, named in a message) is written as JSON escapes instead."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def error_response(exc: NeffcacheError, headers: dict[str, str] | None = None) -> JSONResponse:
    if exc.code == "unauthorized":
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return ErrorJSONResponse(exc.to_body(), status_code=exc.http_status, headers=headers)


def _internal_error(exc: Exception) -> JSONResponse:
    return ErrorJSONResponse(
        {"error": "internal_error", "detail": f"internal error ({type(exc).__name__}); see the service log"},
        status_code=500,
    )


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path (for a 405's Allow header; the
    framework's names only the first route that has the path)."""
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        if route.methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods
    return sorted(methods)


def _domain_cause(exc: BaseException) -> NeffcacheError | None:
    """The domain error `exc` is, or was raised from: Starlette's exception middleware turns a
    handled error whose response already started into a RuntimeError raised from it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, NeffcacheError):
            return seen
        seen = seen.__cause__
    return None


class CatchUnexpected:
    """Answers an exception no handler took with the 500 body, inside the app. Starlette's
    outermost middleware would answer too, but then re-raise to the server, which logs it again
    and closes the connection, resetting the next request a client had already sent on it. An
    exception after the response started (a stream cut short) can only end the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            refusal = _domain_cause(exc)
            if started and refusal is not None:
                # A refusal after the response started: a stream cut short on purpose (a stored
                # object that does not hash to its digest), already logged and counted where it
                # was found. Returning without the body's end makes the server close the
                # connection, which is the cut; re-raising would log it again as unhandled.
                log.warning("%s %s: response cut short: %s", scope.get("method"), scope.get("path"), refusal.detail)
                return
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            await _internal_error(exc)(scope, receive, send)


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
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cls = FRAMEWORK_ERRORS.get(exc.status_code)
        if cls is None:  # no other status is raised by the framework as it is used here
            log.error("unexpected HTTP %d on %s %s: %s", exc.status_code, request.method, request.url.path, exc.detail)
            return _internal_error(exc)
        # The router's own details ("Not Found", "Method Not Allowed") stay as they are: clients
        # tell a missing endpoint from a missing object by them.
        detail = str(exc.detail)
        if cls is errors.MalformedRequest:
            detail = f"request body is not valid JSON: {exc.__cause__ or exc.detail}"
        headers = dict(exc.headers or {})
        if cls is errors.MethodNotAllowed:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return error_response(cls(detail), headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only what escapes CatchUnexpected (an error in an outer middleware) comes here.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _internal_error(exc)

    app.add_middleware(CatchUnexpected)

    plain_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The app's OpenAPI document, its error responses completed by document_errors."""
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(plain_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
