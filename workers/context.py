"""What a worker process holds while it runs: built once at start, shared by its threads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neffcache.db.session import Database
from neffcache.settings import Settings
from neffcache.storage import ObjectStore
from neffcache.workers.backends.base import Backend, Toolchain


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


_current: WorkerContext | None = None


def install(ctx: WorkerContext) -> None:
    global _current
    _current = ctx


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("no worker context: run jobs through `neffcache-worker`")
    return _current
