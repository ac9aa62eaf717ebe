"""What compile and push show while they work: uploads before, the jobs followed after
(`compile --wait`, a live table on a terminal), and how each result reads."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.live import Live
from rich.table import Table
from rich.text import Text

from neffcache.client import output
from neffcache.client.api import NeffcacheClient
from neffcache.errors import NotFound, Unreachable

if TYPE_CHECKING:
    from neffcache.client.specs import SpecEntry

FINAL_STATES = ("succeeded", "failed", "cancelled")
UNREACHABLE_FOR_S = 120  # the service may restart while we wait; longer than this ends the wait


def upload_missing(client: NeffcacheClient, entries: list[SpecEntry]) -> None:
    """HEAD every model named by path; upload the ones the service lacks, with a progress bar."""
    upload_files(client, [(e.digest, e.model_path) for e in entries if e.model_path is not None])


def upload_files(client: NeffcacheClient, files: list[tuple[str, Path]]) -> None:
    """(digest, path) pairs: each digest the service lacks is uploaded once."""
    todo: dict[str, Path] = {}
    for digest, path in files:
        todo.setdefault(digest, path)
    missing = [(digest, path) for digest, path in todo.items() if client.blob_size(digest) is None]
    if not missing:
        return
    with output.transfer_progress() as progress:
        for digest, path in missing:
            size = path.stat().st_size
            task = progress.add_task(f"upload {path.name}", total=size)
            client.upload_blob(digest, path, functools.partial(progress.advance, task))
            if progress.disable:  # no bar drawn: say it in one line
                output.say(f"uploaded {path} ({output.human_bytes(size)}) as {digest}")


def status_text(r: dict[str, Any]) -> str:
    """One compile result, for people: hit, queued (job), failed (why; job), ..."""
    status = r["status"]
    job = r.get("job") or {}
    if status == "hit":
        return "hit"
    if status == "queued":
        return f"queued (joined job {job.get('id')})" if r.get("deduplicated") else f"queued (job {job.get('id')})"
    if status in ("failed", "cancelled"):
        why = str(job.get("failure_class") or job.get("state"))
        lines = (job.get("message") or "").strip().splitlines()
        msg = lines[0][:160] if lines else ""
        if msg.startswith(f"{why}: "):
            msg = msg[len(why) + 2:]
        return f"{status} ({why}{': ' + msg if msg else ''}; job {job.get('id')})"
    if status == "timed_out":
        return f"still {job.get('state')} (job {job.get('id')}) when the wait timed out"
    return status


def _job_row(label: str, job: dict[str, Any]) -> list[Any]:
    return [label, output.short(job.get("key")), job.get("id", "")[:8], job.get("state"),
            f"{job.get('attempts')}/{job.get('max_attempts')}", job.get("worker") or "",
            (job.get("failure_class") or "")]


def follow(client: NeffcacheClient, results: list[dict[str, Any]], timeout: float | None,
           interval: float) -> None:
    """Poll every queued job until it ends or the deadline passes; show a live table meanwhile.
    Each result's status becomes the job's final state, or "timed_out"."""
    pending = {r["job"]["id"]: r for r in results if r["status"] == "queued"}
    if not pending:
        return
    deadline = time.monotonic() + timeout if timeout else None
    live_mode = output.err.is_terminal
    last_state: dict[str, str] = {}
    unreachable_since: float | None = None

    def render() -> Table:
        t = Table(title="compile jobs", title_justify="left")
        for c in ("spec", "key", "job", "state", "attempt", "worker", "failure"):
            t.add_column(c)
        for r in results:
            if r.get("job"):
                t.add_row(*[Text(str(c)) for c in _job_row(r["label"], r["job"])])
        return t

    live = Live(render(), console=output.err, refresh_per_second=4, transient=True) if live_mode else None
    try:
        if live:
            live.start()
        while pending:
            for job_id in list(pending):
                r = pending[job_id]
                try:
                    job = client.job(job_id)
                    unreachable_since = None
                except Unreachable as exc:
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > UNREACHABLE_FOR_S:
                        raise
                    if not live:
                        output.say(f"(retrying) {exc.detail}")
                    break
                r["job"] = job
                state = job["state"]
                if not live and last_state.get(job_id) != state:
                    output.say(f"{r['label']}: job {job_id} {state} (attempt {job.get('attempts')}/"
                               f"{job.get('max_attempts')}{', worker ' + job['worker'] if job.get('worker') else ''})")
                last_state[job_id] = state
                if state in FINAL_STATES:
                    r["status"] = state
                    del pending[job_id]
                    if state == "succeeded":
                        try:
                            r["artifact"] = client.artifact(r["key"])
                        except NotFound:
                            pass
            if live:
                live.update(render())
            if not pending:
                break
            if deadline is not None and time.monotonic() >= deadline:
                for r in pending.values():
                    r["status"] = "timed_out"
                break
            time.sleep(interval)
    finally:
        if live:
            live.stop()
