"""The cache's decisions: is this spec a hit, a job to join, a remembered failure, or a new job.

Each public function is one unit of work: it opens one session (which commits once, at the
end) and only after that commit does anything outside the database (enqueueing).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neffcache import dispatch as dispatching
from neffcache import lifecycle
from neffcache.db.models import Artifact, ArtifactUsage, Blob, Job, utcnow
from neffcache.dispatch import dispatch
from neffcache.errors import BlobMissing, NotFound, ToolchainAmbiguous, ToolchainUnavailable
from neffcache.key import key_for_spec, manifest_diff
from neffcache.lifecycle import REMEMBERED_FAILURES, FailureClass, JobState
from neffcache.queue import queue_for_manifest
from neffcache.service.auth import Grant
from neffcache.service.context import ServiceContext
from neffcache.service.toolchains import resolve_spec
from neffcache.service.views import artifact_view, job_view
from neffcache.spec import CompileSpec

NEAREST_LIMIT = 5
NEAREST_SCAN = 200
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status_code: int
    body: dict[str, Any]


def resolve_key(ctx: ServiceContext, spec: CompileSpec) -> tuple[CompileSpec, dict[str, Any], str]:
    try:
        resolved = resolve_spec(ctx.registered_toolchains, spec, ctx.sdk)
    except (ToolchainUnavailable, ToolchainAmbiguous):
        # The toolchains in memory may predate a worker that just registered: ask again before
        # refusing, so a new worker's toolchain is never refused for being new.
        ctx.toolchains.clear()
        resolved = resolve_spec(ctx.registered_toolchains, spec, ctx.sdk)
    manifest, key = key_for_spec(resolved.model_dump(mode="json"))
    return resolved, manifest, key


def published(ctx: ServiceContext, session: Session, key: str) -> Artifact | None:
    """The artifact of a whole key, from memory when it was read in the last hot_cache_s
    (artifacts are immutable); a miss is asked of the database every time, so an artifact is
    found as soon as it is published."""
    def load() -> Artifact | None:
        artifact = session.get(Artifact, key)
        if artifact is not None:
            # Out of the session, with its files: an object kept in memory must not be expired
            # by that session's rollback (a request refused after reading it) or commit.
            for entry in artifact.files:
                session.expunge(entry)
            session.expunge(artifact)
        return artifact

    return ctx.artifacts.get_or_load(key, load)


def _record(ctx: ServiceContext, kind: str, manifest: dict[str, Any], key: str, artifact: Artifact | None,
            caller: str | None) -> None:
    """Count the request (metrics) and record its event, written off the request path (service.events)."""
    outcome = "hit" if artifact is not None else "miss"
    ctx.events.record(kind, outcome, manifest, key, caller, artifact.compile_seconds if artifact is not None else 0.0)
    ctx.metrics.cache_request(kind, outcome, manifest["target"])


def artifact_hits(ctx: ServiceContext, key: str) -> dict[str, int]:
    """How often an artifact was used, as two counts named apart (the same two /v1/stats gives):
    Called with no session open: it may wait for a flush, which on SQLite waits for readers.

    `lookup_hits`, the lookups and compile requests it answered, and `downloads` of its files.

    The written counts (one row, by key) as read at most hot_cache_s ago, plus every event this
    process recorded since that read: exact for this process's own events, and at most
    hot_cache_s behind for other processes'."""
    def read() -> Any:
        def written() -> tuple[int, int]:
            with ctx.db.session() as session:
                row = session.get(ArtifactUsage, key)
                return (row.lookup_hits, row.downloads) if row is not None else (0, 0)

        return ctx.events.usage_snapshot(key, written)

    snapshot = ctx.usage.get_or_load(key, read)
    assert snapshot is not None
    lookups, downloads = snapshot.now(ctx.events.recorded_usage(key))
    return {"lookup_hits": lookups, "downloads": downloads}


def latest_job(session: Session, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.key == key).order_by(Job.created_at.desc()).limit(1))


def _create_or_join(session: Session, ctx: ServiceContext, manifest: dict[str, Any], key: str,
                    caller: str | None, annotations: dict[str, str]) -> tuple[Job, bool]:
    """Insert the key's job, or join the one a concurrent request just inserted."""
    job = Job(
        id=str(uuid.uuid4()),
        key=key,
        manifest=manifest,
        queue=queue_for_manifest(ctx.settings.queue_prefix, manifest),
        attempts=0,
        max_attempts=ctx.settings.max_attempts,
        requested_by=caller,
        cancel_requested=False,
        annotations=annotations or None,
        created_at=utcnow(),
    )
    return lifecycle.create(session, job)


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
    (`dispatch.stale_reason`) is reconciled first: the answer then says `reconciled`."""
    created: Job | None = None
    send: Callable[[], Any] | None = None
    resolved, manifest, key = resolve_key(ctx, spec)
    spec_out = resolved.model_dump(mode="json")
    with ctx.db.session() as session:  # no connection is taken unless a query needs one
        artifact = published(ctx, session, key)
    if artifact is not None:  # a hit needs no model: it is compiled already
        _record(ctx, "compile", manifest, key, artifact, caller)
        return Outcome(200, {"status": "hit", "key": key, "spec": spec_out,
                             "artifact": artifact_view(artifact, artifact_hits(ctx, key))})
    with ctx.db.session() as session:
        if session.get(Blob, resolved.model.digest) is None:
            raise BlobMissing(
                f"spec.model.digest: blob {resolved.model.digest} has not been uploaded "
                f"(PUT /v1/blobs/{resolved.model.digest} first)"
            )
        _record(ctx, "compile", manifest, key, None, caller)
        running = lifecycle.active_job(session, key)
        reconciled: dict[str, str] = {}
        if running is not None and force:
            stale_id = running.id
            running, reason, send = _reconcile_stale(ctx, session, running)
            if reason is not None:
                reconciled = {"reconciled": reason, "stale_job": stale_id}
        if running is not None:
            body = {"status": "queued", "key": key, "spec": spec_out, "job": job_view(running),
                    "deduplicated": True, **reconciled}
        else:
            last = latest_job(session, key)
            if (not force and last is not None and last.state == JobState.FAILED
                    and last.failure_class in REMEMBERED_FAILURES):
                return Outcome(200, {"status": "failed", "key": key, "spec": spec_out, "job": job_view(last)})
            job, created_now = _create_or_join(session, ctx, manifest, key, caller, annotations or {})
            if created_now:
                created = job
            body = {"status": "queued", "key": key, "spec": spec_out, "job": job_view(job),
                    "deduplicated": not created_now, **reconciled}
    if send is not None:
        send()
    if created is not None:
        dispatch(ctx.db, ctx.redis, created.queue, created.id, attempt=1)
    return Outcome(202, body)


def lookup(ctx: ServiceContext, spec: CompileSpec, grant: Grant) -> Outcome:
    """A hit, or NotFound with the nearest published manifests the token may see."""
    resolved, manifest, key = resolve_key(ctx, spec)
    with ctx.db.session() as session:  # no connection is taken unless a query needs one
        artifact = published(ctx, session, key)
        nearest = nearest_manifests(session, manifest, grant) if artifact is None else []
    _record(ctx, "lookup", manifest, key, artifact, grant.caller)
    if artifact is not None:
        return Outcome(200, {"status": "hit", "key": key, "spec": resolved.model_dump(mode="json"),
                             "artifact": artifact_view(artifact, artifact_hits(ctx, key))})
    raise NotFound(
        f"no artifact for key {key}" + (f"; {len(nearest)} published for the same model differ" if nearest else
                                       "; nothing is published for this model"),
        key=key,
        nearest=nearest,
    )


def nearest_manifests(session: Session, manifest: dict[str, Any], grant: Grant) -> list[dict[str, Any]]:
    """Published manifests of the same model in the token's namespaces, closest first, with the
    fields that differ."""
    query = grant.limit(select(Artifact).where(Artifact.model_digest == manifest["model"]["digest"]),
                        Artifact.namespace)
    rows = session.scalars(query.order_by(Artifact.created_at.desc()).limit(NEAREST_SCAN)).all()
    scored = [(manifest_diff(manifest, a.manifest), a) for a in rows]
    scored.sort(key=lambda pair: len(pair[0]))
    return [{"key": a.key, "differs": diff, "manifest": a.manifest} for diff, a in scored[:NEAREST_LIMIT]]


def record_download(ctx: ServiceContext, artifact: Artifact, caller: str | None) -> None:
    _record(ctx, "download", artifact.manifest, artifact.key, artifact, caller)
