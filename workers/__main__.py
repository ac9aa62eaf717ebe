"""`neffcache-worker` (or `python -m neffcache.workers`): a compile host's worker process.

Detects the toolchain this host runs, registers it, listens on the queues of exactly that
toolchain, and sends heartbeats (each followed by a sweep for lost workers' jobs).
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import socket
import sys
import uuid

from neffcache import logs
from neffcache.db.session import Database
from neffcache.queue import connect_redis, queues_for_toolchain
from neffcache.settings import Settings
from neffcache.storage import open_store
from neffcache.workers import context, maintenance, registry
from neffcache.workers.backends.registry import load_backend

log = logging.getLogger("neffcache.worker")
# Seconds a stopping worker has to record that it stopped and clean up before it is ended.
SHUTDOWN_GRACE_S = 15.0


def build_context(settings: Settings) -> context.WorkerContext:
    backend = load_backend(settings)
    toolchain = backend.detect()
    worker_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    queues = queues_for_toolchain(
        settings.queue_prefix, toolchain.compiler_name, toolchain.compiler_version,
        toolchain.targets, toolchain.isas, toolchain.packages,
    )
    return context.WorkerContext(
        settings=settings,
        db=Database(settings.database_url),
        store=open_store(settings),
        redis=connect_redis(settings.redis_url),
        backend=backend,
        toolchain=toolchain,
        worker_id=worker_id,
        queues=queues,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neffcache-worker", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    parser.add_argument("--print-toolchain", action="store_true", help="print the detected toolchain and exit")
    args = parser.parse_args(argv)
    settings = Settings()
    logs.configure(settings.log_format)  # rq's worker logs through it too (it adds none of its own then)
    try:
        ctx = build_context(settings)
    except Exception as exc:  # noqa: BLE001 - one readable line for the operator
        print(f"neffcache-worker: cannot start: {exc}", file=sys.stderr)
        return 2
    if args.print_toolchain:
        print(ctx.toolchain.as_dict())
        return 0
    context.install(ctx)
    context.take_scratch(ctx)  # what dead workers of this host left: killed, removed (and logged)
    registry.register(ctx)
    heartbeat = registry.Heartbeat(ctx)
    heartbeat.start()
    health = registry.HealthProbe(ctx)  # a worker that cannot reach storage claims nothing
    health.start()
    upkeep = maintenance.Maintenance(ctx)  # the periodic GC: one worker at a time holds its lease
    upkeep.start()
    log.info("worker %s: %s==%s for %s; queues %s", ctx.worker_id, ctx.toolchain.compiler_name,
             ctx.toolchain.compiler_version, ", ".join(ctx.toolchain.targets), ", ".join(ctx.queues))
    # SimpleWorker runs each job in this process: the compiler itself already runs in a child
    # process group that we time out and kill, and the heartbeat thread keeps beating meanwhile.
    worker = registry.rq_worker(ctx)  # SimpleWorker, gated on the worker's health
    try:
        worker.work(burst=args.burst, logging_level="WARNING")
    finally:
        # However the worker stops (a cold shutdown interrupts whatever the main thread was doing,
        # a database call included), it is gone within the grace: past it, every thread's stack
        # goes to the log and the process exits, rather than hang on with its heartbeat stopped.
        faulthandler.dump_traceback_later(SHUTDOWN_GRACE_S, exit=True)
        upkeep.stop()
        health.stop()
        heartbeat.stop()
        registry.mark_stopped(ctx)
        context.release_scratch(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
