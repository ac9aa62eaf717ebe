"""A worker's presence: registration, heartbeats, its health, and the sweep it runs on each beat.

The sweep is what makes a dead worker (or a Redis that lost its data) harmless:
- the reap: a running job whose worker has been silent for `worker_lost_after_s` fails as
  `worker_lost` (and is retried); so does one this worker holds in the database but no longer
  runs (its outcome could not be recorded: the database was down), as `storage_unavailable`;
- a queued job that never reached Redis (the enqueue after commit failed), or a retry whose
  backoff has passed, is enqueued;
- every `queue_check_interval_s`: a queued job that was enqueued but that Redis no longer holds
  (Redis restarted empty, failed over, evicted it) is enqueued again, and workers silent for
  longer than `worker_retention_s` are forgotten (their rows deleted);
- on every sweep too, what dead workers of this host left in the work dir (compilers that
  outlived them, their scratch folders) is killed and removed, as a worker starting on the host does
  (`context.reap_dead_scratch`): a worker is dead when its process is, which the host itself
  tells (a worker the database records as lost may be alive, cut off from the database, and
  compiling; its folder is never touched).
Every live worker sweeps; the lifecycle's conditional steps make concurrent sweeps safe, and a
job sent twice compiles once (the claim is conditional).

Health: a worker that cannot reach the object store or the database claims no job until it can
(`rq_worker` gates RQ's dequeue on it), and says so: its state is `degraded` in /v1/workers.
`HealthProbe` checks both every heartbeat interval; a job that meets a StorageError marks the
worker degraded at once, until the next check passes.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, or_, select, text

from neffcache import dispatch as dispatching
from neffcache import invalidation
from neffcache.db.models import Job, Worker, utcnow
from neffcache.db.session import DATABASE_UNAVAILABLE
from neffcache.dispatch import QueuedJob, dispatch
from neffcache.errors import StorageError
from neffcache.lifecycle import FailureClass, JobState, WorkerState
from neffcache.sdk import SdkTable, sdk_releases_of
from neffcache.workers import context, jobs
from neffcache.workers.context import WorkerContext

log = logging.getLogger(__name__)
# A new job not in Redis this long after it was created is enqueued by the sweep (the
# service enqueues right after its commit; this covers a Redis failure at that moment).
ORPHAN_GRACE_S = 10.0

# Per worker process, by worker id: what it cannot reach (None: all well), and the job its task
# is running. Process-local on purpose: the database may be what is unreachable.
_problems: dict[str, str] = {}
_running: dict[str, str] = {}
# Jobs whose attempt ended because the database or the store failed, before its outcome could be
# recorded. Any other attempt of this worker's that ended unrecorded was abandoned (a cold
# shutdown): the worker was lost to it.
_unrecorded: set[str] = set()


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
                toolchain={**t.as_dict(), "sdk_releases": sdk_releases_of(SdkTable.load(), t.compiler_name,
                                                                          t.compiler_version)},
                queues=ctx.queues,
                state=WorkerState.DEGRADED if ctx.worker_id in _problems else WorkerState.IDLE,
                current_job=_running.get(ctx.worker_id),
                started_at=utcnow(),
                last_heartbeat=utcnow(),
            )
        )


def beat(
    ctx: WorkerContext, state: WorkerState | None = None, current_job: str | None = None, clear_job: bool = False
) -> None:
    """Record that this worker is alive (and `state`, `current_job` when given). An idle worker
    that cannot reach storage is `degraded`, and back to `idle` once it can."""
    with ctx.db.session() as session:
        worker = session.get(Worker, ctx.worker_id)
        if worker is None:  # deleted by an operator: come back
            session.rollback()
            register(ctx)
            return
        worker.last_heartbeat = utcnow()
        if state:
            worker.state = state
        if ctx.worker_id in _problems and worker.state == WorkerState.IDLE:
            worker.state = WorkerState.DEGRADED
        elif ctx.worker_id not in _problems and worker.state == WorkerState.DEGRADED:
            worker.state = WorkerState.IDLE
        if current_job or clear_job:
            worker.current_job = current_job


# --- health: can this worker reach what a job needs? ---------------------------------------------

def unavailable(ctx: WorkerContext) -> str | None:
    """What this worker cannot reach (the object store, the database), or None."""
    return _problems.get(ctx.worker_id)


def note_unavailable(ctx: WorkerContext, problem: str) -> None:
    """Stop claiming jobs until `check_health` passes again."""
    if ctx.worker_id not in _problems:
        log.warning("worker %s claims no job until this clears: %s", ctx.worker_id, problem)
    _problems[ctx.worker_id] = problem


def check_health(ctx: WorkerContext) -> str | None:
    """Check the object store (`ObjectStore.probe`: it reads and writes an object, as a job
    would) and the database; note the outcome (a degraded worker claims nothing) and return the
    problem, or None."""
    problem = None
    try:
        ctx.store.probe()
    except Exception as exc:  # noqa: BLE001 - whatever it is, this worker cannot store outputs
        problem = f"object store unavailable: {exc}"
    if problem is None:
        try:
            with ctx.db.session() as session:
                session.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - the database is down or unreachable
            problem = f"database unavailable: {type(exc).__name__}: {exc}"
    if problem is not None:
        note_unavailable(ctx, problem)
    elif _problems.pop(ctx.worker_id, None) is not None:
        log.warning("worker %s reaches the object store and the database again: claiming jobs", ctx.worker_id)
    return problem


class HealthProbe(threading.Thread):
    """Runs `check_health` every heartbeat interval, apart from the heartbeat: a check that hangs
    on an unreachable endpoint must not delay the beats (the worker would look lost)."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="neffcache-health", daemon=True)
        self.ctx = ctx
        self.stopping = threading.Event()

    def run(self) -> None:
        while True:
            try:
                check_health(self.ctx)
            except Exception as exc:  # noqa: BLE001 - the probe must outlive anything
                log.warning("health check failed: %s", exc)
            if self.stopping.wait(self.ctx.settings.heartbeat_interval_s):
                return

    def stop(self) -> None:
        self.stopping.set()


def wait_until_available(ctx: WorkerContext, keep_alive: Any = None, poll_s: float = 0.5) -> None:
    """Block while this worker cannot reach storage. `keep_alive()` runs meanwhile (RQ's own
    worker heartbeat), so RQ does not count the waiting worker dead; a Redis blip there is
    ignored (RQ's dequeue, next, waits out a Redis that is down)."""
    while unavailable(ctx) is not None:
        if keep_alive is not None:
            try:
                keep_alive()
            except Exception as exc:  # noqa: BLE001 - an RQ error here must not end the worker
                log.debug("RQ heartbeat while degraded failed: %s", exc)
        time.sleep(poll_s)


def rq_worker(ctx: WorkerContext) -> Any:
    """RQ's SimpleWorker on this worker's queues, which takes no job off a queue while the worker
    cannot reach storage: it waits (RQ state `suspended`) and leaves the jobs to other workers."""
    from rq import SimpleWorker
    from rq.worker import WorkerStatus

    class GatedWorker(SimpleWorker):
        def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
            if unavailable(ctx) is not None:
                # Not busy: a stop signal ends the wait (RQ raises StopRequested from its handler).
                wait_until_available(ctx, lambda: (self.set_state(WorkerStatus.SUSPENDED), self.heartbeat()))
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    return GatedWorker(ctx.queues, connection=ctx.redis, name=ctx.worker_id)


def is_unavailability(exc: BaseException) -> bool:
    """The object store or the database did not answer (not the job's or the worker's fault)."""
    return isinstance(exc, (StorageError, *DATABASE_UNAVAILABLE))


@contextmanager
def running(ctx: WorkerContext, job_id: str) -> Iterator[None]:
    """Around one delivery of a job, claim included: this worker is running it. A job the
    database says this worker runs, outside of this, is one whose outcome was never recorded."""
    _running[ctx.worker_id] = job_id
    try:
        yield
    except Exception as exc:
        if is_unavailability(exc):
            _unrecorded.add(job_id)
        raise
    finally:
        _running.pop(ctx.worker_id, None)


# --- the sweep -------------------------------------------------------------------------------------

def sweep(ctx: WorkerContext) -> None:
    # First: it needs neither the database nor Redis, so an outage of either does not stop it.
    context.reap_dead_scratch(ctx)
    reap_lost_jobs(ctx)
    enqueue_due_jobs(ctx)


def check_queues(ctx: WorkerContext) -> None:
    """The slower half of the sweep, every `queue_check_interval_s`."""
    requeue_missing_jobs(ctx)
    forget_dead_workers(ctx)


def reap_lost_jobs(ctx: WorkerContext) -> None:
    """Running jobs whose worker went silent, stopped (a cold shutdown mid-compile) or was
    deleted: fail the attempt as `worker_lost`, which retries it. And this worker's own running
    jobs that it is not running (the attempt ended but the database did not take its outcome):
    hand them back as `storage_unavailable`."""
    with ctx.db.session() as session:
        alive = dispatching.live_workers(session, ctx.settings.worker_lost_after_s)
        running_jobs = session.execute(select(Job.id, Job.worker_id).where(Job.state == JobState.RUNNING)).all()
    # Read after the jobs: a job claimed since was marked running here before its claim.
    mine = _running.get(ctx.worker_id)
    for job_id, worker_id in running_jobs:
        if worker_id == ctx.worker_id and job_id != mine:
            if job_id in _unrecorded:
                failure_class = FailureClass.STORAGE_UNAVAILABLE
                message = (f"the attempt on {worker_id} ended but its outcome could not be recorded "
                           "(database unavailable)")
            else:
                failure_class = FailureClass.WORKER_LOST
                message = f"worker {worker_id} abandoned the attempt (it is shutting down)"
            log.warning("job %s: this worker's attempt ended without its outcome recorded; handing it back (%s)",
                        job_id, failure_class)
            jobs.record_failure(ctx, job_id, failure_class, message, expected_worker=worker_id)
            _unrecorded.discard(job_id)
        elif worker_id not in alive:
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


def requeue_missing_jobs(ctx: WorkerContext) -> list[str]:
    """Queued jobs of this worker's queues, enqueued more than `queue_check_interval_s` ago,
    that Redis does not hold (in no queue, and not started by a live worker): enqueue them
    again. Raises when Redis does not answer (nothing is re-sent on a guess). The ids sent."""
    checked_before = utcnow() - timedelta(seconds=ctx.settings.queue_check_interval_s)
    with ctx.db.session() as session:
        queued = [QueuedJob(job_id, queue, attempts, enqueued_at) for job_id, queue, attempts, enqueued_at in
                  session.execute(select(Job.id, Job.queue, Job.attempts, Job.enqueued_at).where(
                      Job.state == JobState.QUEUED,
                      Job.enqueued_at < checked_before,
                      Job.queue.in_(ctx.queues),
                  )).all() if enqueued_at is not None]
        alive = dispatching.live_workers(session, ctx.settings.worker_lost_after_s)
    if not queued:
        return []
    missing = dispatching.not_held(ctx.redis, alive, queued)
    if missing:
        log.warning("%d of %d queued jobs are not in Redis (it lost them?): enqueueing them again",
                    len(missing), len(queued))
    return [job.id for job in missing if dispatching.redeliver(ctx.db, ctx.redis, job)]


def forget_dead_workers(ctx: WorkerContext) -> int:
    """Delete the rows of workers silent (or stopped) for longer than `worker_retention_s`,
    unless a running job still names one (the reap hands that job back first). How many."""
    silent_since = utcnow() - timedelta(seconds=ctx.settings.worker_retention_s)
    with ctx.db.session() as session:
        busy = exists().where(Job.worker_id == Worker.id, Job.state == JobState.RUNNING)
        gone = session.execute(
            delete(Worker).where(Worker.last_heartbeat < silent_since, ~busy).execution_options(
                synchronize_session=False)
        )
        count = int(getattr(gone, "rowcount", 0) or 0)
    if count:
        log.info("forgot %d workers silent for more than %g s", count, ctx.settings.worker_retention_s)
    return count


def mark_stopped(ctx: WorkerContext) -> None:
    with ctx.db.session() as session:
        worker = session.get(Worker, ctx.worker_id)
        if worker is not None:
            worker.state, worker.current_job, worker.last_heartbeat = WorkerState.STOPPED, None, utcnow()
    # Its toolchain is out of service now: the API processes drop their view of the registered
    # toolchains at once, not up to hot_cache_s later (neffcache.invalidation).
    invalidation.announce(ctx.redis, ctx.settings.queue_prefix, invalidation.Invalidation.toolchains())


class Heartbeat(threading.Thread):
    """Beats and sweeps every `heartbeat_interval_s`, and checks the queues every
    `queue_check_interval_s`, until stopped."""

    def __init__(self, ctx: WorkerContext) -> None:
        super().__init__(name="neffcache-heartbeat", daemon=True)
        self.ctx = ctx
        self.stopping = threading.Event()

    def run(self) -> None:
        next_check = time.monotonic() + self.ctx.settings.queue_check_interval_s
        while not self.stopping.wait(self.ctx.settings.heartbeat_interval_s):
            try:
                beat(self.ctx)
                sweep(self.ctx)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.ctx.settings.queue_check_interval_s
                    check_queues(self.ctx)
            except Exception as exc:  # noqa: BLE001 - a database or Redis blip must not kill the worker
                log.warning("heartbeat failed: %s", exc)

    def stop(self) -> None:
        self.stopping.set()
