"""What a worker process holds while it runs: built once at start, shared by its threads."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neffcache.db.session import Database
from neffcache.settings import Settings
from neffcache.storage import ObjectStore
from neffcache.workers.backends import process
from neffcache.workers.backends.base import Backend, Toolchain

log = logging.getLogger(__name__)


@dataclass
class WorkerContext:
    settings: Settings
    db: Database
    store: ObjectStore
    redis: Any
    backend: Backend
    toolchain: Toolchain
    worker_id: str
    queues: list[str]
    # This worker's own folder for its jobs' scratch dirs (take_scratch); None until it has one.
    scratch: Path | None = None


_current: WorkerContext | None = None


def install(ctx: WorkerContext) -> None:
    global _current
    _current = ctx


def take_scratch(ctx: WorkerContext) -> list[process.Reaped]:
    """At start: kill what this host's dead workers left running and remove their scratch dirs,
    then give this worker a folder of its own under the work dir, where its jobs' scratch dirs
    go (ctx.settings.work_dir points there from now on). Returns what was removed."""
    reaped = _reap(ctx.settings.work_dir)
    ctx.scratch = process.claim_scratch(ctx.settings.work_dir)
    ctx.settings = ctx.settings.model_copy(update={"work_dir": str(ctx.scratch)})
    return reaped


def reap_dead_scratch(ctx: WorkerContext) -> list[process.Reaped]:
    """On each sweep: what `take_scratch` does at start, again, for the workers of this host that
    died since (their compilers killed, their scratch folders removed), in the work dir this
    worker's own folder is in. Nothing when this worker has no folder of its own (it never took
    one). Returns what was removed."""
    if ctx.scratch is None:
        return []
    return _reap(ctx.scratch.parent)


def _reap(work_dir: str | Path | None) -> list[process.Reaped]:
    """process.reap_dead_scratch, each folder removed logged."""
    reaped = process.reap_dead_scratch(work_dir)
    for gone in reaped:
        log.warning("removed %s, left by a dead worker (and SIGKILLed its compilers' process groups: %s)",
                    gone.folder, ", ".join(map(str, gone.killed_groups)) or "none recorded")
    return reaped


def release_scratch(ctx: WorkerContext) -> None:
    """At a clean stop: remove this worker's scratch folder (its jobs have ended)."""
    if ctx.scratch is not None:
        process.release_scratch(ctx.scratch)
        ctx.scratch = None


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("no worker context: run jobs through `neffcache-worker`")
    return _current
