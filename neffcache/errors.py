"""Domain errors: one class per stable code, and the two tables that map codes outward.

Every error the service can answer with, and every failure the client reports, is one of
these. The code string is part of the public contract (clients switch on it), so a code is
never renamed; the HTTP status and CLI exit code come only from the tables below.
"""

from __future__ import annotations

from typing import Any, ClassVar


class NeffcacheError(Exception):
    """Base class. `detail` names the field or object at fault; `extra` lands in the body."""

    code: ClassVar[str] = "internal_error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


# --- the request itself is wrong -------------------------------------------------------------
class MalformedRequest(NeffcacheError):
    code = "malformed_json"


class InvalidSpec(NeffcacheError):
    code = "invalid_spec"


class UnknownTarget(InvalidSpec):
    code = "unknown_target"


class UnknownCompiler(InvalidSpec):
    code = "unknown_compiler"


class InvalidDtype(InvalidSpec):
    code = "invalid_dtype"


class InvalidShape(InvalidSpec):
    code = "invalid_shape"


class InvalidFlags(InvalidSpec):
    code = "invalid_flags"


class InvalidDigest(NeffcacheError):
    code = "invalid_digest"


class InvalidParameter(NeffcacheError):
    code = "invalid_parameter"


class ToolchainAmbiguous(NeffcacheError):
    code = "toolchain_ambiguous"


class ToolchainUnavailable(NeffcacheError):
    code = "toolchain_unavailable"


class ToolchainMismatch(NeffcacheError):
    code = "toolchain_mismatch"


class DigestMismatch(NeffcacheError):
    code = "digest_mismatch"


class TooLarge(NeffcacheError):
    code = "too_large"


class BlobMissing(NeffcacheError):
    code = "blob_missing"


class NotFound(NeffcacheError):
    code = "not_found"


class JobFinished(NeffcacheError):
    code = "job_finished"


class ArtifactExists(NeffcacheError):
    """A key is published already, with other bytes: artifacts are immutable."""

    code = "artifact_exists"


class InvalidNeff(NeffcacheError):
    code = "invalid_neff"


class Unauthorized(NeffcacheError):
    code = "unauthorized"


class Forbidden(NeffcacheError):
    code = "forbidden"


# --- something behind the service is wrong ---------------------------------------------------
class CorruptObject(NeffcacheError):
    """Stored bytes no longer hash to the digest they are stored under."""

    code = "corrupt_object"


class StorageError(NeffcacheError):
    """The object store refused or failed (SDK and OS errors are translated to this)."""

    code = "storage_unavailable"


class NotReady(NeffcacheError):
    code = "not_ready"


# --- outcomes the client reports -------------------------------------------------------------
class CompileFailed(NeffcacheError):
    code = "compile_failed"


class TimedOut(NeffcacheError):
    code = "timed_out"


class RuntimeMismatch(NeffcacheError):
    code = "runtime_mismatch"


class IntegrityFailure(NeffcacheError):
    code = "integrity_failure"


class Unreachable(NeffcacheError):
    code = "unreachable"


class UsageError(NeffcacheError):
    code = "usage_error"


HTTP_STATUS: dict[str, int] = {
    "malformed_json": 400,
    "digest_mismatch": 400,
    "invalid_digest": 400,
    "invalid_parameter": 400,
    "invalid_spec": 422,
    "unknown_target": 422,
    "unknown_compiler": 422,
    "invalid_dtype": 422,
    "invalid_shape": 422,
    "invalid_flags": 422,
    "toolchain_ambiguous": 422,
    "toolchain_unavailable": 422,
    "toolchain_mismatch": 422,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "blob_missing": 409,
    "job_finished": 409,
    "artifact_exists": 409,
    "invalid_neff": 422,
    "too_large": 413,
    "corrupt_object": 502,
    "storage_unavailable": 503,
    "not_ready": 503,
    "internal_error": 500,
}

# Exit codes of the `neffcache` command, documented in the README.
EXIT_SUCCESS = 0
EXIT_COMPILE_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_MISS = 4
EXIT_INTEGRITY = 5
EXIT_UNAVAILABLE = 6

EXIT_CODE: dict[str, int] = {
    "compile_failed": EXIT_COMPILE_FAILED,
    "usage_error": EXIT_USAGE,
    "timed_out": EXIT_TIMEOUT,
    "not_found": EXIT_MISS,
    "blob_missing": EXIT_MISS,
    "corrupt_object": EXIT_INTEGRITY,
    "digest_mismatch": EXIT_INTEGRITY,
    "integrity_failure": EXIT_INTEGRITY,
    "artifact_exists": EXIT_INTEGRITY,
    "invalid_neff": EXIT_INTEGRITY,
    "runtime_mismatch": EXIT_INTEGRITY,
    "unauthorized": EXIT_UNAVAILABLE,
    "forbidden": EXIT_UNAVAILABLE,
    "unreachable": EXIT_UNAVAILABLE,
    "not_ready": EXIT_UNAVAILABLE,
    "storage_unavailable": EXIT_UNAVAILABLE,
    "internal_error": EXIT_UNAVAILABLE,
}


def http_status(code: str) -> int:
    return HTTP_STATUS.get(code, 500)


def exit_code(code: str) -> int:
    """Refusals of the request (4xx that are not listed) are usage errors: exit 2."""
    if code in EXIT_CODE:
        return EXIT_CODE[code]
    return EXIT_USAGE if 400 <= http_status(code) < 500 else EXIT_UNAVAILABLE


_BY_CODE: dict[str, type[NeffcacheError]] = {}


def _index(cls: type[NeffcacheError]) -> None:
    _BY_CODE[cls.code] = cls
    for sub in cls.__subclasses__():
        _index(sub)


_index(NeffcacheError)


def from_body(body: dict[str, Any]) -> NeffcacheError:
    """Rebuild the error a service answered with (the client's side of `to_body`)."""
    code = str(body.get("error", "internal_error"))
    detail = str(body.get("detail", ""))
    extra = {k: v for k, v in body.items() if k not in ("error", "detail")}
    err = _BY_CODE.get(code, NeffcacheError)(detail, **extra)
    if code not in _BY_CODE:
        err.code = code  # type: ignore[misc]  # keep an unknown code verbatim
    return err
