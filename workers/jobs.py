"""Job state transitions a worker makes: claim, publish (the commit point), fail or retry.

Every transition is a conditional UPDATE on the job's current state, so a job run twice (an
RQ redelivery, a sweep racing a slow worker) changes nothing the second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neffcache.db.models import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    TRANSIENT_FAILURES,
    Artifact,
    ArtifactFile,
    Job,
    utcnow,
)
from neffcache.workers.context import WorkerContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    key: str
    manifest: dict[str, Any]
    attempt: int
    annotations: dict[str, str] | None = None


@dataclass(frozen=True)
class PublishedFile:
    name: str
    digest: str  # "sha256:<hex>"
    size: int
    neff: dict[str, Any] | None = None  # the NEFF header summary, for a NEFF


def claim(ctx: WorkerContext, job_id: str) -> ClaimedJob | None:
    """queued -> running for this worker, or None when the job is not ours to run."""
    with ctx.db.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.state != QUEUED:
            return None
        if session.get(Artifact, job.key) is not None:
            # Published meanwhile (by a forced job or another host): nothing to compile.
            _set(session, job_id, QUEUED, state=SUCCEEDED, finished_at=utcnow(), message="already published")
            return None
        claimed = _set(
            session, job_id, QUEUED,
            state=RUNNING, attempts=Job.attempts + 1, worker_id=ctx.worker_id,
            started_at=utcnow(), finished_at=None,
            # The log is the last attempt's: a retry starts a new one.
            log_digest=None, log_tail=None, log_bytes=0,
        )
        if not claimed:
            return None
        session.refresh(job)
        return ClaimedJob(job.id, job.key, job.manifest, job.attempts, job.annotations)


@dataclass(frozen=True)
class LogState:
    tail: str
    size: int
    digest: str | None = None  # set once the whole log is stored


def poll_running(ctx: WorkerContext, job_id: str, progress: LogState | None) -> bool:
    """While compiling: store the log's progress (when given); True when the job must stop."""
    with ctx.db.session() as session:
        if progress is not None:
            _set(session, job_id, RUNNING, only_worker=ctx.worker_id, log_tail=progress.tail, log_bytes=progress.size)
        job = session.get(Job, job_id)
        return job is None or job.cancel_requested or job.state != RUNNING


def publish(ctx: WorkerContext, job: ClaimedJob, files: list[PublishedFile], log: LogState,
            seconds: float, message: str) -> bool:
    """Record the artifact and finish the job in one transaction: the row is the commit point.

    The files are already in the object store (digest verified). An artifact is immutable:
    if another attempt published this key first, that one stands.
    """
    with ctx.db.session() as session:
        if session.get(Artifact, job.key) is None:
            try:
                with session.begin_nested():
                    session.add(Artifact.from_manifest(
                        job.key, job.manifest,
                        [ArtifactFile(name=f.name, digest=f.digest, size=f.size, neff=f.neff) for f in files],
                        compile_seconds=seconds, job_id=job.id, annotations=job.annotations,
                    ))
            except IntegrityError:
                log.info("key %s was published concurrently; keeping the first", job.key)
        return _set(
            session, job.id, RUNNING, only_worker=ctx.worker_id,
            state=SUCCEEDED, finished_at=utcnow(), failure_class=None,
            message=message, log_digest=log.digest, log_tail=None, log_bytes=log.size,
        )


def retry_delay(settings: Any, attempt: int) -> float:
    return settings.retry_backoff_s * (2 ** max(attempt - 1, 0))


def record_failure(ctx: WorkerContext, job_id: str, failure_class: str, message: str,
                   log: LogState | None = None, expected_worker: str | None = None) -> None:
    """Record a failed attempt. Transient classes go back to the queue while attempts remain.
    Without a `log` (the worker was lost, say) the last stored progress of the log stays."""
    with ctx.db.session() as session:
        _fail(ctx, session, job_id, failure_class, message, log, expected_worker)


def _fail(ctx: WorkerContext, session: Session, job_id: str, failure_class: str, message: str,
          log: LogState | None, expected_worker: str | None) -> None:
    job = session.get(Job, job_id)
    if job is None or job.state != RUNNING or (expected_worker and job.worker_id != expected_worker):
        return
    common: dict[str, Any] = {"failure_class": failure_class}
    if log is not None:
        common.update(log_tail=log.tail, log_digest=log.digest, log_bytes=log.size)
    where_worker = {"only_worker": job.worker_id}
    if failure_class == "cancelled" or job.cancel_requested:
        _set(session, job_id, RUNNING, **where_worker, state=CANCELLED, finished_at=utcnow(),
             message=f"cancelled while running: {message}", **{**common, "failure_class": None})
        return
    if failure_class in TRANSIENT_FAILURES and job.attempts < job.max_attempts:
        # Back to the queue with a due time; the sweep of a worker that has this toolchain
        # enqueues it then (so a retry also waits for a host to come back).
        delay = retry_delay(ctx.settings, job.attempts)
        _set(session, job_id, RUNNING, **where_worker, state=QUEUED, enqueued_at=None, worker_id=None,
             not_before=utcnow() + timedelta(seconds=delay),
             message=f"attempt {job.attempts} of {job.max_attempts} failed ({failure_class}: {message}); "
                     f"retrying in {delay:g} s", **common)
        return
    _set(session, job_id, RUNNING, **where_worker, state=FAILED, finished_at=utcnow(),
         message=f"{failure_class}: {message}" + (f" (after {job.attempts} attempts)" if job.attempts > 1 else ""),
         **common)


def _set(session: Session, job_id: str, from_state: str, *, only_worker: str | None = None, **values: Any) -> bool:
    """Conditional transition: only from `from_state` (and, when given, only for that worker)."""
    query = update(Job).where(Job.id == job_id, Job.state == from_state)
    if only_worker is not None:
        query = query.where(Job.worker_id == only_worker)
    return session.execute(query.values(**values)).rowcount == 1
