"""From a command's results to its exit code (the table is in the package's docstring).

Commands that report several results (compile, push, lookup) print them all first, then call
`conclude`: the worst outcome picks the exit code, and its reason is the last line on stderr.
Errors raised as neffcache.errors exceptions exit with their class's exit_code (see app.py).
"""

from __future__ import annotations

from typing import Any

from neffcache import errors
from neffcache.errors import (
    EXIT_COMPILE_FAILED,
    EXIT_INTEGRITY,
    EXIT_MISS,
    EXIT_TIMEOUT,
)


class Finished(Exception):
    """A command ends with `code`; `reason` is its last line on stderr (with --json too, unless
    `human_only`). The entry point prints it, after everything else."""

    def __init__(self, code: int, reason: str | None = None, human_only: bool = False) -> None:
        super().__init__(reason or f"exit {code}")
        self.code = code
        self.reason = reason
        self.human_only = human_only


def _with(results: list[dict[str, Any]], *statuses: str) -> list[dict[str, Any]]:
    return [r for r in results if r["status"] in statuses]


def _entries(results: list[dict[str, Any]]) -> str:
    return "; ".join(f"{r['entry']}: {r['detail']}" for r in results)


def conclude(results: list[dict[str, Any]], *, timeout: float | None = None, count_refused: bool = False) -> None:
    """Raise Finished with the exit code of the worst outcome, and its reason: a failed (or
    cancelled) compile 1, an invalid NEFF 5, a refusal by its error code, a wait that timed out
    3, a miss 4. Returns when all went well. `count_refused`: the reason says how many of the
    entries were refused."""
    failed = _with(results, "failed", "cancelled")
    if failed:
        raise Finished(EXIT_COMPILE_FAILED, f"{len(failed)} of {len(results)} compile(s) failed; "
                       "see `neffcache logs JOB`", human_only=True)
    invalid = _with(results, "invalid")
    if invalid:
        raise Finished(EXIT_INTEGRITY, "neffcache: " + _entries(invalid))
    refused = _with(results, "refused")
    if refused:
        counted = (f"the service refused {len(refused)} of {len(results)} entr"
                   f"{'y' if len(results) == 1 else 'ies'}: ") if count_refused else ""
        raise Finished(errors.exit_code(refused[0]["error"]), "neffcache: " + counted + _entries(refused))
    waiting = [r["job"]["id"] for r in _with(results, "timed_out")]
    if waiting:
        # The results are already out (on stdout with --json): the reason is one line on stderr.
        raise Finished(EXIT_TIMEOUT, f"neffcache: timed out after {timeout:g} s waiting for {len(waiting)} "
                                     f"job(s): {', '.join(waiting)} (they go on running)")
    if _with(results, "miss"):
        raise Finished(EXIT_MISS)
