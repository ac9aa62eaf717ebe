"""A worker's units of work on a job: claim, heartbeat, publish (the commit point), and ending a
failed attempt. Each opens one session and changes the job's state only through
`neffcache.lifecycle`, whose steps are conditional, so a job run twice (an RQ redelivery, a
sweep racing a slow worker) changes nothing the second time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import IntegrityError

from neffcache import lifecycle, logs
from neffcache.db.models import Artifact, ArtifactFile, Job, utcnow
from neffcache.lifecycle import FailureClass, JobState, Step
from neffcache.workers.context import WorkerContext

logger = logging.getLogger(__name__)  # not `log`: publish's log is the compile log


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    key: str
    manifest: dict[str, Any]
    attempt: int
    annotations: dict[str, str] | None = None
    request_id: str | None = None  # of the request that created the job: this worker's lines carry it


@dataclass(frozen=True)
class PublishedFile:
    name: str
    digest: str  # "sha256:<hex>"
    size: int
    neff: dict[str, Any] | None = None  # the NEFF header summary, for a NEFF


@dataclass(frozen=True)
class LogState:
    tail: str
    size: int
    digest: str | None = None  # set once the whole log is stored

    def columns(self) -> dict[str, Any]:
        return {"log_tail": self.tail, "log_bytes": self.size, "log_digest": self.digest}


def claim(ctx: WorkerContext, job_id: str) -> ClaimedJob | None:
    """queued -> running for this worker, or None when the job is not ours to run."""
    with ctx.db.session() as session:
        job = lifecycle.claim(session, job_id, ctx.worker_id)
        if job is None:
            return None
        claimed = ClaimedJob(job.id, job.key, job.manifest, job.attempts, job.annotations, job.request_id)
    logs.job_transition(logger, job=claimed.id, key=claimed.key, state=JobState.RUNNING, step=Step.CLAIM,
                        worker=ctx.worker_id, request=claimed.request_id, attempt=claimed.attempt)
    return claimed


def poll_running(ctx: WorkerContext, job_id: str, progress: LogState | None) -> bool:
    """While compiling: store the log's progress (when given); True when the job must stop."""
    with ctx.db.session() as session:
        if progress is not None:
            lifecycle.transition(session, job_id, Step.HEARTBEAT, worker=ctx.worker_id,
                                 log_tail=progress.tail, log_bytes=progress.size)
        job = session.get(Job, job_id)
        return job is None or job.cancel_requested or job.state != JobState.RUNNING


def publish(ctx: WorkerContext, job: ClaimedJob, files: list[PublishedFile], log: LogState,
            seconds: float, message: str) -> bool:
    """Record the artifact and finish the job in one transaction: the row is the commit point.

    The files are already in the object store (digest verified). An artifact is immutable:
    if another attempt published this key first, that one stands. The job keeps the log's tail
    (its view shows it) as well as the whole log's digest.
    """
    with ctx.db.session() as session:
        if session.get(Artifact, job.key) is None:
            row = session.get(Job, job.id)
            try:
                with session.begin_nested():
                    session.add(Artifact.from_manifest(
                        job.key, job.manifest,
                        [ArtifactFile(name=f.name, digest=f.digest, size=f.size, neff=f.neff) for f in files],
                        compile_seconds=seconds, job_id=job.id, annotations=job.annotations,
                        origin_token=row.requested_by if row is not None else None,
                    ))
            except IntegrityError:
                logger.info("key %s was published concurrently; keeping the first", job.key)
        published = lifecycle.transition(
            session, job.id, Step.PUBLISH, worker=ctx.worker_id,
            finished_at=utcnow(), failure_class=None, message=message, **log.columns(),
        )
    if published:
        logs.job_transition(logger, job=job.id, key=job.key, state=JobState.SUCCEEDED, step=Step.PUBLISH,
                            worker=ctx.worker_id, request=job.request_id, attempt=job.attempt,
                            compile_seconds=round(seconds, 3))
    return published


def record_failure(ctx: WorkerContext, job_id: str, failure_class: FailureClass, message: str,
                   log: LogState | None = None, expected_worker: str | None = None) -> Step | None:
    """Record a failed attempt. Transient classes go back to the queue while attempts remain.
    Without a `log` (the worker was lost, say) the last stored progress of the log stays.
    The step taken (fail, retry or stop), or None when the attempt had already ended."""
    with ctx.db.session() as session:
        step = lifecycle.end_attempt(
            session, job_id, failure_class, message, retry_backoff_s=ctx.settings.retry_backoff_s,
            storage_backoff_s=ctx.settings.storage_retry_backoff_s,
            storage_backoff_max_s=ctx.settings.storage_retry_backoff_max_s,
            worker=expected_worker, log=log.columns() if log is not None else None,
        )
        job = session.get(Job, job_id)  # end_attempt read it: no query
        key, request_id = (job.key, job.request_id) if job is not None else ("", None)
    if step is not None:
        logs.job_transition(logger, job=job_id, key=key, state=lifecycle.TRANSITIONS[step][1], step=step,
                            worker=expected_worker, request=request_id, failure_class=str(failure_class))
    return step
