"""A worker's presence: registration, heartbeats, and the sweep it runs on each beat.

The sweep is what makes a dead worker harmless: a running job whose worker has been silent
for `worker_lost_after_s` fails as `worker_lost` (and is retried): the reap, and a queued job that
never reached Redis (the enqueue after commit failed) is enqueued. Every live worker sweeps; the
lifecycle's conditional steps make concurrent sweeps safe.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from sqlalchemy import and_, or_, select

from neffcache.db.models import Job, Worker, utcnow
from neffcache.dispatch import dispatch
from neffcache.lifecycle import FailureClass, JobState, WorkerState, heard_since
from neffcache.sdk import SdkTable
from neffcache.workers import jobs
from neffcache.workers.context import WorkerContext

log = logging.getLogger(__name__)
# A new job not in Redis this long after it was created is enqueued by the sweep (the
# service enqueues right after its commit; this covers a Redis failure at that moment).
ORPHAN_GRACE_S = 10.0


def register(ctx: WorkerContext) -> None:
    t = ctx.toolchain
    with ctx.db.session() as session:
        session.merge(
            Worker(
                id=ctx.worker_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                compiler_name=t.compiler_name,
                compiler_version=t.compiler_version,
                runtime_name=t.runtime_name,
                runtime_version=t.runtime_version,
                # Which SDK releases ship this compiler: shown by /v1/toolchains and the CLI.
                toolchain={**t.as_dict(), "sdk_releases": SdkTable.load().with_compiler(t.compiler_version)
                           if t.compiler_name == "neuronx-cc" else []},
                queues=ctx.queues,
                state=WorkerState.IDLE,
                current_job=None,
                started_at=utcnow(),
                last_heartbeat=utcnow(),
            )
        )


def beat(
    ctx: WorkerContext, state: WorkerState | None = None, current_job: str | None = None, clear_job: bool = False
) -> None:
    with ctx.db.session() as session:
        worker = session.get(Worker, ctx.worker_id)
        if worker is None:  # deleted by an operator: come back
            session.rollback()
            register(ctx)
            return
        worker.last_heartbeat = utcnow()
        if state:
            worker.state = state
        if current_job or clear_job:
            worker.current_job = current_job


def sweep(ctx: WorkerContext) -> None:
    reap_lost_jobs(ctx)
    enqueue_due_jobs(ctx)


def reap_lost_jobs(ctx: WorkerContext) -> None:
    """Running jobs whose worker went silent, stopped (a cold shutdown mid-compile) or was
    deleted: fail the attempt as `worker_lost`, which retries it."""
    with ctx.db.session() as session:
        alive = set(
            session.scalars(select(Worker.id).where(heard_since(ctx.settings.worker_lost_after_s)))
        )
        running = session.execute(select(Job.id, Job.worker_id).where(Job.state == JobState.RUNNING)).all()
        victims = [(job_id, worker_id) for job_id, worker_id in running if worker_id not in alive]
    for job_id, worker_id in victims:
        log.warning("job %s: worker %s is lost; failing the attempt as worker_lost", job_id, worker_id)
        jobs.record_failure(
            ctx, job_id, FailureClass.WORKER_LOST, f"worker {worker_id} stopped sending heartbeats",
            expected_worker=worker_id,
        )


def enqueue_due_jobs(ctx: WorkerContext) -> None:
    """Queued jobs of this worker's queues that are not in Redis: retries whose backoff has
    passed, and new jobs whose enqueue after commit failed."""
    now = utcnow()
    orphan_before = now - timedelta(seconds=ORPHAN_GRACE_S)
    with ctx.db.session() as session:
        due = session.execute(
            select(Job.id, Job.queue, Job.attempts).where(
                Job.state == JobState.QUEUED,
                Job.enqueued_at.is_(None),
                Job.queue.in_(ctx.queues),
                or_(
                    Job.not_before <= now,  # a retry whose backoff has passed
                    and_(Job.not_before.is_(None), Job.created_at < orphan_before),  # a lost first enqueue
                ),
            )
        ).all()
    for job_id, queue, attempts in due:
        dispatch(ctx.db, ctx.redis, queue, job_id, attempts + 1)


def mark_stopped(ctx: WorkerContext) -> None:
    with ctx.db.session() as session:
        worker = session.get(Worker, ctx.worker_id)
        if worker is not None:
            worker.state, worker.current_job, worker.last_heartbeat = WorkerState.STOPPED, None, utcnow()


class Heartbeat(threading.Thread):
    """Beats and sweeps every `heartbeat_interval_s` until stopped."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="neffcache-heartbeat", daemon=True)
        self.ctx = ctx
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.ctx.settings.heartbeat_interval_s):
            try:
                beat(self.ctx)
                sweep(self.ctx)
            except Exception as exc:  # noqa: BLE001 - a database blip must not kill the worker
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.stopping.set()
