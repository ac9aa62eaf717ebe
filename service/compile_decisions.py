"""What a compile request that is not a hit decides: the key's active job to join, a remembered
failure, or a new job (service.cache answers the hit). One transaction per decision, and only
after its commit what goes to Redis; a storm of identical requests shares one decision
(ServiceContext.compile_decisions).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeGuard

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from neffcache import dispatch as dispatching
from neffcache import lifecycle, logs
from neffcache.db.models import Blob, Job, utcnow
from neffcache.dispatch import dispatch
from neffcache.errors import BlobMissing, InvalidSpec
from neffcache.lifecycle import ACTIVE_STATES, REMEMBERED_FAILURES, FailureClass, JobState, Step
from neffcache.queue import queue_for_manifest
from neffcache.service import cache
from neffcache.service.cache import Outcome
from neffcache.service.context import ServiceContext
from neffcache.service.views import job_view
from neffcache.spec import FOLDER_FORMAT, CompileSpec

log = logging.getLogger(__name__)


def latest_job(session: Session, key: str) -> Job | None:
    """The key's active job if it has one (at most one: the database sees to it), else its
    newest: one query answers both what a request joins and what failure it may remember."""
    active_first = case((Job.state.in_([s.value for s in ACTIVE_STATES]), 0), else_=1)
    return session.scalar(select(Job).where(Job.key == key).order_by(active_first, Job.created_at.desc()).limit(1))


def remembered_failure(job: Job | None, ttl_s: float | None) -> TypeGuard[Job]:
    """Whether a key's latest job (`latest_job`) is a failure that a request without `force` is
    answered with instead of compiling again: a deterministic class, finished less than `ttl_s`
    ago (NEFFCACHE_FAILURE_TTL_S; None: for ever). The one rule for compile requests and for
    prewarm's readiness."""
    if job is None or job.state != JobState.FAILED or job.failure_class not in REMEMBERED_FAILURES:
        return False
    return ttl_s is None or utcnow() - (job.finished_at or job.created_at) < timedelta(seconds=ttl_s)


def _new_job(ctx: ServiceContext, manifest: dict[str, Any], key: str, caller: str | None,
             annotations: dict[str, str]) -> Job:
    """The key's job, to insert. It is inserted marked enqueued (`dispatch.send_created` sends it
    after the commit, and takes the mark back if it cannot): nothing is written between the send
    and the worker's claim."""
    now = utcnow()
    return Job(
        id=str(uuid.uuid4()),
        key=key,
        manifest=manifest,
        namespace=manifest["namespace"],
        queue=queue_for_manifest(ctx.settings.queue_prefix, manifest),
        attempts=0,
        max_attempts=ctx.settings.max_attempts,
        requested_by=caller,
        request_id=logs.request_id.get(),  # the worker's log lines of the job carry it
        cancel_requested=False,
        annotations=annotations or None,
        created_at=now,
        enqueued_at=now,
    )


def _reconcile_stale(ctx: ServiceContext, session: Session, job: Job
                     ) -> tuple[Job | None, str | None, Callable[[], Any] | None]:
    """A forced request's look at its key's active job: (the job to join, or None when it ended
    and a new one is to be made; why it was stale, or None; what to send to Redis after the
    commit). A job queued but in no queue is sent again; one running on a lost worker is handed
    back (`worker_lost`, guarded by that worker's id) and sent at once, backoff or not; if that
    was its last attempt it fails, and the request makes a new job."""
    reason = dispatching.stale_reason(session, ctx.redis, job, ctx.settings.worker_lost_after_s)
    if reason is None:
        return job, None, None
    log.warning("forced compile of key %s: its job %s is stale (%s); reconciling it", job.key, job.id, reason)
    job_id, queue = job.id, job.queue
    if reason == dispatching.NOT_IN_REDIS:
        assert job.enqueued_at is not None
        seen = dispatching.QueuedJob(job_id, queue, job.attempts, job.enqueued_at)
        return job, reason, lambda: dispatching.redeliver(ctx.db, ctx.redis, seen)
    if reason == dispatching.WORKER_LOST:
        s = ctx.settings
        lifecycle.end_attempt(session, job_id, FailureClass.WORKER_LOST,
                              f"worker {job.worker_id} stopped sending heartbeats (found by a forced request)",
                              retry_backoff_s=s.retry_backoff_s, storage_backoff_s=s.storage_retry_backoff_s,
                              storage_backoff_max_s=s.storage_retry_backoff_max_s, worker=job.worker_id)
        session.refresh(job)
        if job.state != JobState.QUEUED:
            return None, reason, None
    attempt = job.attempts + 1
    return job, reason, lambda: dispatch(ctx.db, ctx.redis, queue, job_id, attempt)


def submit_compile(ctx: ServiceContext, spec: CompileSpec, force: bool, caller: str | None,
                   annotations: dict[str, str] | None = None) -> Outcome:
    """A hit, a remembered failure, the key's active job to join, or a new job. With `force` a
    remembered failure is compiled again, and an active job that will never finish by itself
    (`dispatch.stale_reason`) is reconciled first: the answer then says `reconciled`. Without it,
    a remembered failure older than `failure_ttl_s` is compiled again too: the answer then says
    `retried_after_ttl` (and `failed_job`)."""
    resolved, spec_out, manifest, key = cache.resolve_key(ctx, spec)
    with ctx.db.session() as session:  # no connection is taken unless a query needs one
        artifact = cache.published(ctx, session, key)
    if artifact is not None:  # a hit needs no model: it is compiled already
        return cache.hit(ctx, "compile", spec_out, manifest, artifact, caller)
    check_farm_builds(resolved)

    def decide() -> Outcome:
        return _decide(ctx, resolved.model.digest, manifest, key, spec_out, force, caller, annotations or {})

    # A forced request acts on its key's job (reconciles it): it decides alone. Any other shares
    # the decision this process is making for its key, if it is making one (a storm of requests).
    outcome, shared = (decide(), False) if force else ctx.compile_decisions.share(key, decide)
    cache.record(ctx, "compile", manifest, key, None, caller)
    return _as_joined(outcome, spec_out) if shared else outcome


def check_farm_builds(spec: CompileSpec) -> None:
    """InvalidSpec unless the farm compiles what `spec` names (it does not compile folders)."""
    if spec.model.format == FOLDER_FORMAT:
        raise InvalidSpec(f"spec.model.format: {FOLDER_FORMAT} folders are compiled by NxD Inference on a Neuron "
                          "host, not by the farm: publish the folder with `neffcache push --dir DIR --spec SPEC` "
                          "(a compile request of its spec is a hit once it is pushed)")


def _decide(ctx: ServiceContext, model_digest: str, manifest: dict[str, Any], key: str, spec_out: dict[str, Any],
            force: bool, caller: str | None, annotations: dict[str, str]) -> Outcome:
    """The answer to a compile request that is not a hit: one transaction (the model's blob, the
    key's job: joined, remembered as failed, or made), then, after its commit, what goes to Redis."""
    job = _new_job(ctx, manifest, key, caller, annotations)
    created: Job | None
    with ctx.db.session() as session:
        # The model is in use: first, so that it holds the blob's row lock, which the GC deletes
        # an unused blob under (neffcache.gc.delete_blob): either the GC sees this use, or this
        # request sees the blob gone (BlobMissing, and the client uploads it again).
        touch_blob(session, model_digest)
        # The first request of a key (no job yet, its model uploaded) takes one statement; any
        # other request the reads it needs.
        if lifecycle.create_for_new_key(session, job, model_digest):
            outcome, send, created = _queued(key, spec_out, job, deduplicated=False), None, job
        else:
            outcome, send, created = _read_and_decide(ctx, session, job, model_digest, spec_out, force)
    if send is not None:
        send()
    if created is not None:
        logs.job_transition(log, job=created.id, key=created.key, state=JobState.QUEUED, step=Step.CREATE,
                            queue=created.queue, caller=caller)
        assert created.enqueued_at is not None
        dispatching.send_created(ctx.db, ctx.redis, created.queue, created.id, created.enqueued_at)
    return outcome


def touch_blob(session: Session, digest: str) -> None:
    """Record that the blob was just used (uploaded, or named by a compile request): the GC
    sweeps only blobs unused for NEFFCACHE_GC_BLOB_TTL_S."""
    session.execute(update(Blob).where(Blob.digest == digest).values(last_used_at=utcnow())
                    .execution_options(synchronize_session=False))


def _read_and_decide(ctx: ServiceContext, session: Session, new: Job, model_digest: str, spec_out: dict[str, Any],
                     force: bool) -> tuple[Outcome, Callable[[], Any] | None, Job | None]:
    """_decide for a key that has jobs (or a model not uploaded): (the answer, what to send to
    Redis after the commit, the job it made)."""
    if session.get(Blob, model_digest) is None:
        raise BlobMissing(f"spec.model.digest: blob {model_digest} has not been uploaded "
                          f"(PUT /v1/blobs/{model_digest} first)")
    current = latest_job(session, new.key)
    active = current if current is not None and current.state in ACTIVE_STATES else None
    send: Callable[[], Any] | None = None
    reconciled: dict[str, str] = {}
    if current is not None and active is not None and force:
        active, reason, send = _reconcile_stale(ctx, session, active)
        if reason is not None:
            reconciled = {"reconciled": reason, "stale_job": current.id}
    if active is not None:
        return _queued(new.key, spec_out, active, deduplicated=True, **reconciled), send, None
    retried: dict[str, Any] = {}
    if not force and remembered_failure(current, ctx.settings.failure_ttl_s):
        failed = {"status": "failed", "key": new.key, "spec": spec_out, "job": job_view(current)}
        return Outcome(200, failed), None, None
    if not force and remembered_failure(current, None):
        # Compilers get fixed: a failure older than the TTL is compiled again, as `force` would.
        retried = {"retried_after_ttl": True, "failed_job": current.id}
    job, created_now = lifecycle.create(session, new)
    return (_queued(new.key, spec_out, job, deduplicated=not created_now, **reconciled, **retried), send,
            job if created_now else None)


def _queued(key: str, spec_out: dict[str, Any], job: Job, deduplicated: bool, **said: Any) -> Outcome:
    """A queued job's answer; `said`: why it is this job (reconciled, retried_after_ttl)."""
    return Outcome(202, {"status": "queued", "key": key, "spec": spec_out, "job": job_view(job),
                         "deduplicated": deduplicated, **said})


def _as_joined(outcome: Outcome, spec_out: dict[str, Any]) -> Outcome:
    """Another request's answer (never a forced one's) as this request's: with its own spec (the
    same key, maybe spelled otherwise), and the job it names joined, not made."""
    body = {**outcome.body, "spec": spec_out}
    if "deduplicated" in body:
        body["deduplicated"] = True
    return Outcome(outcome.status_code, body)
