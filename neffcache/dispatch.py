"""Hand a committed job to its queue, note that it got there, and check that it is still there.

Called after the transaction that created the job has committed, and by the workers' sweep
for retries that are due and for jobs whose first enqueue failed: a job with no `enqueued_at`
is enqueued again, so none is lost between the database and the queue.

The database is the source of truth, Redis only a delivery channel: a Redis that restarts empty
(or evicts, or fails over without its data) loses jobs the database still says are queued and
enqueued. `not_held` finds them (their current attempt is in no queue and no live worker is
running it) and `redeliver` enqueues them again; the sweep does it periodically, and a forced
compile request for the job's key does it at once (`stale_reason`). Sending a job twice is
harmless: the worker's claim is conditional, so it compiles once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from neffcache.db import models
from neffcache.db.models import utcnow
from neffcache.db.session import Database
from neffcache.lifecycle import JobState, Step, heard_since, transition
from neffcache.queue import enqueue_compile, presence, rq_job_id

log = logging.getLogger(__name__)


def dispatch(db: Database, redis: Any, queue: str, job_id: str, attempt: int) -> bool:
    # Enqueue first, then mark: dying in between leaves a duplicate delivery (harmless, the
    # claim is conditional), never a job that is marked enqueued but is not in Redis.
    try:
        enqueue_compile(redis, queue, job_id, attempt)
    except Exception as exc:  # noqa: BLE001 - any Redis failure: leave it to the sweep
        log.warning("enqueue of job %s attempt %d failed (%s); the sweep will retry", job_id, attempt, exc)
        return False
    with db.session() as session:
        transition(session, job_id, Step.ENQUEUE, enqueued_at=utcnow())
    return True


def send_created(db: Database, redis: Any, queue: str, job_id: str, marked_at: datetime) -> bool:
    """Enqueue the first attempt of a job whose creating transaction (committed) already marked
    it enqueued at `marked_at`: nothing is written after the send, so the worker that takes the
    job claims it without waiting for the service's write (on SQLite, for its lock). If the send
    fails the mark is taken back (guarded by `marked_at`, so a redelivery since is kept), and the
    sweep enqueues the job as one whose enqueue failed; if the service dies in between, the mark
    stays and the queue check (`not_held`, every queue_check_interval_s) finds the job missing
    from Redis and sends it. True if it was sent."""
    try:
        enqueue_compile(redis, queue, job_id, 1)
    except Exception as exc:  # noqa: BLE001 - any Redis failure: leave it to the sweep
        log.warning("enqueue of job %s failed (%s); the sweep will retry", job_id, exc)
        try:
            with db.session() as session:
                transition(session, job_id, Step.ENQUEUE, only_if=models.Job.enqueued_at <= marked_at,
                           enqueued_at=None)
        except Exception as unmark:  # noqa: BLE001 - the mark stays: the queue check finds the job
            log.warning("could not take back job %s's enqueue mark (%s); the queue check will send it", job_id,
                        unmark)
        return False
    return True


class QueuedJob(NamedTuple):
    """A queued job as the database has it: enough to find its current attempt in Redis."""

    id: str
    queue: str
    attempts: int  # attempts made so far: the one waiting is attempts + 1
    enqueued_at: datetime

    @property
    def rq_id(self) -> str:
        return rq_job_id(self.id, self.attempts + 1)


def not_held(redis: Any, live_workers: Iterable[str], jobs: Sequence[QueuedJob]) -> list[QueuedJob]:
    """The jobs whose waiting attempt Redis does not hold (see `queue.Presence.held`). Raises
    when Redis does not answer: a Redis that cannot be asked is not a Redis that lost them."""
    live = set(live_workers)
    by_queue: dict[str, list[QueuedJob]] = {}
    for job in jobs:
        by_queue.setdefault(job.queue, []).append(job)
    missing: list[QueuedJob] = []
    for queue, queued in by_queue.items():
        found = presence(redis, queue, [job.rq_id for job in queued])
        missing.extend(job for job in queued if not found[job.rq_id].held(live))
    return missing


def redeliver(db: Database, redis: Any, job: QueuedJob) -> bool:
    """Enqueue again a queued job that Redis lost. The enqueue step is taken first, guarded by
    the `enqueued_at` the job was seen with, so of several sweeps (or a sweep and a forced
    request) that saw it missing, one sends it; if the send then fails the job is marked but not
    in Redis, which the next check finds again. True if this call sent it."""
    with db.session() as session:
        won = transition(session, job.id, Step.ENQUEUE, only_if=models.Job.enqueued_at <= job.enqueued_at,
                         enqueued_at=utcnow())
    if not won:
        return False
    try:
        enqueue_compile(redis, job.queue, job.id, job.attempts + 1)
    except Exception as exc:  # noqa: BLE001 - any Redis failure: the next check finds it again
        log.warning("re-enqueue of job %s failed (%s); the next queue check will retry", job.id, exc)
        return False
    log.warning("job %s was queued but not in Redis (Redis lost it?); enqueued it again", job.id)
    return True


def live_workers(session: Session, lost_after_s: float) -> set[str]:
    return set(session.scalars(select(models.Worker.id).where(heard_since(lost_after_s))))


# Why a key's active job will not finish by itself (`stale_reason`), as a forced request says it.
NOT_ENQUEUED = "not_enqueued"  # queued, due, never reached Redis
NOT_IN_REDIS = "not_in_redis"  # queued and enqueued, but Redis does not hold it
WORKER_LOST = "worker_lost"  # running on a worker that stopped sending heartbeats


def stale_reason(session: Session, redis: Any, job: models.Job, lost_after_s: float) -> str | None:
    """Why the active `job` will never finish unless someone acts, or None when it is on its
    way (waiting in Redis, a retry's backoff not yet passed, running on a live worker). When
    Redis cannot be asked the job counts as on its way: a request must not act on a guess."""
    if job.state == JobState.RUNNING:
        return None if job.worker_id in live_workers(session, lost_after_s) else WORKER_LOST
    if job.state != JobState.QUEUED:
        return None
    if job.enqueued_at is None:
        due = job.not_before is None or job.not_before <= utcnow()
        return NOT_ENQUEUED if due else None
    try:
        queued = QueuedJob(job.id, job.queue, job.attempts, job.enqueued_at)
        return NOT_IN_REDIS if not_held(redis, live_workers(session, lost_after_s), [queued]) else None
    except Exception as exc:  # noqa: BLE001 - Redis down: nothing can be told, nothing is done
        log.warning("cannot check whether Redis holds job %s (%s)", job.id, exc)
        return None
