"""The workers' periodic GC (neffcache.gc), every NEFFCACHE_GC_INTERVAL_S.

Every worker runs this thread; the pass's lease in the database lets one of them at a time do
the work (the others find it held and wait for the next interval). It runs apart from the
heartbeat: a pass over a large store takes minutes, and a heartbeat that waited for it would
make the worker look lost.
"""

from __future__ import annotations

import logging
import random
import threading

from neffcache import gc, invalidation
from neffcache.workers.context import WorkerContext

log = logging.getLogger(__name__)


def run_once(ctx: WorkerContext) -> gc.GcReport:
    """One pass as this worker; its evictions are announced to the API processes."""
    def announce(what: invalidation.Invalidation) -> bool:
        return invalidation.announce(ctx.redis, ctx.settings.queue_prefix, what)

    return gc.run_gc(ctx.db, ctx.store, ctx.settings, holder=ctx.worker_id, announce=announce)


class Maintenance(threading.Thread):
    """Runs `run_once` every gc_interval_s (the first after a random part of it, so that workers
    started together do not all ask for the lease at once). Nothing when the interval is 0."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="neffcache-gc", daemon=True)
        self.ctx = ctx
        self.stopping = threading.Event()

    def run(self) -> None:
        interval = self.ctx.settings.gc_interval_s
        if interval <= 0:
            return
        wait = random.uniform(0.1, 1.0) * interval
        while not self.stopping.wait(wait):
            wait = interval
            try:
                run_once(self.ctx)  # logs what it did
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried at the next interval
                log.warning("gc pass failed (retried in %g s): %s", interval, exc)

    def stop(self) -> None:
        self.stopping.set()
