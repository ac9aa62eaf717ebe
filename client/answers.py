"""What the service's answers mean when they are not the one asked for: the neffcache.errors
exception an error response stands for (our JSON body, or a bare status from a proxy or an older
server), whether a body is our error body at all, and what a request that got no answer means."""

from __future__ import annotations

from typing import Any

import httpx

from neffcache import errors
from neffcache.errors import NeffcacheError, Unreachable, UsageError

# Status codes whose error bodies are not ours (a proxy, an older server) -> a code to raise.
_STATUS_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large",
                 502: "unreachable", 503: "unreachable", 504: "unreachable"}
# What a proxy in front of the service answers by itself: worded by status, not "no neffcache".
PROXY_STATUSES = frozenset({401, 403, 413, 502, 503, 504})


def our_error_body(response: httpx.Response) -> bool:
    """{"error": <code>, "detail": <message>}: how the service (any version) words a refusal."""
    try:
        body = response.json() if response.content else None
    except (ValueError, httpx.ResponseNotRead):
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), str) and "detail" in body


def error_from(response: httpx.Response, what: str) -> NeffcacheError:
    """The exception an error response stands for (our JSON body, or the bare status)."""
    body: Any = None
    try:
        if response.content:
            body = response.json()
    except (ValueError, httpx.ResponseNotRead):
        body = None
    status = response.status_code
    if isinstance(body, dict) and "error" in body:
        err = errors.from_body(body, status)
        if status == 404 and err.detail == "Not Found":  # the router's own 404: no such endpoint
            err = errors.NotFound(f"{what}: this service has no such endpoint (is it an older version?)")
    else:
        code = _STATUS_CODES.get(status, "internal_error" if status >= 500 else "invalid_parameter")
        text = (response.text or "").strip().splitlines()
        detail = f"{what}: HTTP {status}" + (f": {text[0][:200]}" if text else "")
        err = errors.from_body({"error": code, "detail": detail})
    if err.code == "unauthorized" and "NEFFCACHE_TOKEN" not in err.detail:
        err.detail = f"unauthorized: {err.detail} (set NEFFCACHE_TOKEN or pass --token)"
    elif err.code == "forbidden":
        err.detail = f"forbidden: {err.detail} ({what})"
    if err.code in ("unauthorized", "forbidden"):
        err.args = (err.detail,)
    err.extra.setdefault("http_status", status)
    return err


def transport_error(exc: Exception, what: str, where: str, timeout_s: float) -> NeffcacheError:
    """The exception a request that got no answer stands for: timed out, a bad URL, unreachable."""
    if isinstance(exc, httpx.TimeoutException):
        return Unreachable(f"{where} did not answer {what} within {timeout_s:g} s")
    if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
        return UsageError(f"bad service URL {where!r}: {exc}")
    reason = str(exc) or type(exc).__name__
    return Unreachable(f"cannot reach the neffcache service at {where} ({what}): {reason}")
