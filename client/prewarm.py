"""What `neffcache prewarm` and `neffcache lock --compiler` share: spec entries as POST
/v1/prewarm takes them, an entry's state in words, and what a followed job makes of an entry.

The service re-keys and decides everything; nothing here computes a key. Nothing here prints.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neffcache.client.specs import SpecEntry

# The statuses of POST /v1/prewarm's entries (service/prewarm.py STATUSES), in the order totals show them.
STATUSES = ("ready", "compiling", "failed", "missing", "unbuildable", "refused")


def spec_sources(entries: list[SpecEntry]) -> list[dict[str, Any]]:
    """Spec file entries (their models hashed) as the request's `specs`: named as the lock names them."""
    return [{"name": entry.name or entry.label, "spec": entry.spec} for entry in entries]


def source_of(entry: dict[str, Any]) -> str:
    """What an answer's entry was: the spec entry's name, or the source artifact's key."""
    return str(entry.get("spec") or entry.get("source_key") or "?")


def state_text(entry: dict[str, Any]) -> str:
    """An entry's state for people: ready; compiling (job); failed (class: message; job); not
    built; unbuildable: why; refused: why."""
    status = entry["status"]
    job = entry.get("job_id")
    if status == "compiling":
        return f"compiling (job {job})"
    if status == "failed":
        lines = (entry.get("message") or "").strip().splitlines()
        why = entry.get("failure_class") or "failed"
        message = lines[0][:200].removeprefix(f"{why}: ") if lines else ""
        return f"failed ({why}{': ' + message if message else ''}; job {job})"
    if status == "missing":
        return "not built"
    if status in ("unbuildable", "refused"):
        return f"{status}: {entry.get('reason')}"
    return str(status)


def totals(entries: list[dict[str, Any]]) -> dict[str, int]:
    counted = Counter(e["status"] for e in entries)
    return {status: counted.get(status, 0) for status in STATUSES}


def with_job_ended(entry: dict[str, Any], job: dict[str, Any] | None, final: str) -> dict[str, Any]:
    """An entry that was compiling, once its job was followed to `final` (a job state, or
    "timed_out"): ready, failed with the job's failure, or still compiling."""
    if final == "succeeded":
        return {**entry, "status": "ready"}
    if final in ("failed", "cancelled") and job is not None:
        return {**entry, "status": "failed", "failure_class": job.get("failure_class") or final,
                "message": job.get("message"), "log_tail": job.get("log_tail")}
    return entry
