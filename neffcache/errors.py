"""Domain errors: one class per stable code, each carrying its HTTP status and CLI exit code.

Every error the service can answer with, and every failure the client reports, is one of
these. The code string is part of the public contract (clients switch on it), so a code is
never renamed. Each class states its own `code`, `http_status` and `exit_code` (a test checks
that none inherits them); the two tables below are derived from the classes.
"""

from __future__ import annotations

from typing import Any, ClassVar

# Exit codes of the `neffcache` command, documented in the README.
EXIT_SUCCESS = 0
EXIT_COMPILE_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_MISS = 4
EXIT_INTEGRITY = 5
EXIT_UNAVAILABLE = 6
# `neffcache-admin gc` only: the pass ran, but a quota cannot be met because pinned artifacts
# alone exceed it (nothing pinned was evicted; README, "Quota, eviction and GC").
EXIT_QUOTA_BLOCKED = 7


class NeffcacheError(Exception):
    """Base class. `detail` names the field or object at fault; `extra` lands in the body."""

    code: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    exit_code: ClassVar[int] = EXIT_UNAVAILABLE

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


# --- the request itself is wrong -------------------------------------------------------------
class MalformedRequest(NeffcacheError):
    code = "malformed_json"
    http_status = 400
    exit_code = EXIT_USAGE


class InvalidSpec(NeffcacheError):
    code = "invalid_spec"
    http_status = 422
    exit_code = EXIT_USAGE


class UnknownTarget(InvalidSpec):
    code = "unknown_target"
    http_status = 422
    exit_code = EXIT_USAGE


class UnknownCompiler(InvalidSpec):
    code = "unknown_compiler"
    http_status = 422
    exit_code = EXIT_USAGE


class InvalidDtype(InvalidSpec):
    code = "invalid_dtype"
    http_status = 422
    exit_code = EXIT_USAGE


class InvalidShape(InvalidSpec):
    code = "invalid_shape"
    http_status = 422
    exit_code = EXIT_USAGE


class InvalidFlags(InvalidSpec):
    code = "invalid_flags"
    http_status = 422
    exit_code = EXIT_USAGE


class InvalidDigest(NeffcacheError):
    code = "invalid_digest"
    http_status = 400
    exit_code = EXIT_USAGE


class InvalidParameter(NeffcacheError):
    code = "invalid_parameter"
    http_status = 400
    exit_code = EXIT_USAGE


class ToolchainAmbiguous(NeffcacheError):
    code = "toolchain_ambiguous"
    http_status = 422
    exit_code = EXIT_USAGE


class ToolchainUnavailable(NeffcacheError):
    code = "toolchain_unavailable"
    http_status = 422
    exit_code = EXIT_USAGE


class ToolchainMismatch(NeffcacheError):
    code = "toolchain_mismatch"
    http_status = 422
    exit_code = EXIT_USAGE


class DigestMismatch(NeffcacheError):
    code = "digest_mismatch"
    http_status = 400
    exit_code = EXIT_INTEGRITY


class TooLarge(NeffcacheError):
    code = "too_large"
    http_status = 413
    exit_code = EXIT_USAGE


class BlobMissing(NeffcacheError):
    code = "blob_missing"
    http_status = 409
    exit_code = EXIT_MISS


class NotFound(NeffcacheError):
    code = "not_found"
    http_status = 404
    exit_code = EXIT_MISS


class MethodNotAllowed(NeffcacheError):
    """The route exists without this method; the response's Allow header lists the ones it has."""

    code = "method_not_allowed"
    http_status = 405
    exit_code = EXIT_USAGE


class JobFinished(NeffcacheError):
    code = "job_finished"
    http_status = 409
    exit_code = EXIT_USAGE


class AmbiguousPrefix(NeffcacheError):
    """A key or job-id prefix that more than one artifact or job starts with; `candidates` lists
    a few. 409, not 400: the request is well formed (a prefix that was unique yesterday becomes
    ambiguous when a new artifact shares it), it conflicts with what is stored now, and a longer
    prefix resolves it. 400 `invalid_parameter` stays for prefixes that no state could fix."""

    code = "ambiguous_prefix"
    http_status = 409
    exit_code = EXIT_USAGE


class ArtifactExists(NeffcacheError):
    """A key is published already, with other bytes: artifacts are immutable."""

    code = "artifact_exists"
    http_status = 409
    exit_code = EXIT_INTEGRITY


class InvalidNeff(NeffcacheError):
    code = "invalid_neff"
    http_status = 422
    exit_code = EXIT_INTEGRITY


class Unauthorized(NeffcacheError):
    code = "unauthorized"
    http_status = 401
    exit_code = EXIT_UNAVAILABLE


class Forbidden(NeffcacheError):
    code = "forbidden"
    http_status = 403
    exit_code = EXIT_UNAVAILABLE


# --- something behind the service is wrong ---------------------------------------------------
class CorruptObject(NeffcacheError):
    """Stored bytes no longer hash to the digest they are stored under."""

    code = "corrupt_object"
    http_status = 502
    exit_code = EXIT_INTEGRITY


class StorageError(NeffcacheError):
    """The object store refused or failed (SDK and OS errors are translated to this)."""

    code = "storage_unavailable"
    http_status = 503
    exit_code = EXIT_UNAVAILABLE


class NotReady(NeffcacheError):
    code = "not_ready"
    http_status = 503
    exit_code = EXIT_UNAVAILABLE


# --- outcomes the client reports -------------------------------------------------------------
class CompileFailed(NeffcacheError):
    code = "compile_failed"
    http_status = 500
    exit_code = EXIT_COMPILE_FAILED


class TimedOut(NeffcacheError):
    code = "timed_out"
    http_status = 500
    exit_code = EXIT_TIMEOUT


class RuntimeMismatch(NeffcacheError):
    code = "runtime_mismatch"
    http_status = 500
    exit_code = EXIT_INTEGRITY


class OriginRefused(NeffcacheError):
    """An artifact whose bytes came from elsewhere than the pull requires (`--require-origin`)."""

    code = "origin_refused"
    http_status = 500
    exit_code = EXIT_INTEGRITY


class IntegrityFailure(NeffcacheError):
    code = "integrity_failure"
    http_status = 500
    exit_code = EXIT_INTEGRITY


class Unreachable(NeffcacheError):
    code = "unreachable"
    http_status = 500
    exit_code = EXIT_UNAVAILABLE


class UsageError(NeffcacheError):
    code = "usage_error"
    http_status = 500
    exit_code = EXIT_USAGE


def all_error_classes() -> list[type[NeffcacheError]]:
    """NeffcacheError and every subclass, depth first."""
    found: list[type[NeffcacheError]] = []

    def walk(cls: type[NeffcacheError]) -> None:
        found.append(cls)
        for sub in cls.__subclasses__():
            walk(sub)

    walk(NeffcacheError)
    return found


_BY_CODE: dict[str, type[NeffcacheError]] = {cls.code: cls for cls in all_error_classes()}
HTTP_STATUS: dict[str, int] = {code: cls.http_status for code, cls in _BY_CODE.items()}
EXIT_CODE: dict[str, int] = {code: cls.exit_code for code, cls in _BY_CODE.items()}


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


def exit_code(code: str) -> int:
    """A code this client does not know (a newer service's) exits by its kind: a 4xx refusal of
    the request is a usage error, anything else the service being unavailable."""
    if code in EXIT_CODE:
        return EXIT_CODE[code]
    return EXIT_USAGE if 400 <= http_status(code) < 500 else EXIT_UNAVAILABLE


def from_body(body: dict[str, Any], status: int | None = None) -> NeffcacheError:
    """Rebuild the error a service answered with (the client's side of `to_body`)."""
    code = str(body.get("error", "internal_error"))
    detail = str(body.get("detail", ""))
    extra = {k: v for k, v in body.items() if k not in ("error", "detail")}
    err = _BY_CODE.get(code, NeffcacheError)(detail, **extra)
    if code not in _BY_CODE:
        # Keep an unknown code verbatim, and exit by the status it came with.
        err.code = code  # type: ignore[misc]
        if status is not None:
            err.http_status = status  # type: ignore[misc]
            err.exit_code = EXIT_USAGE if 400 <= status < 500 else EXIT_UNAVAILABLE  # type: ignore[misc]
    return err
