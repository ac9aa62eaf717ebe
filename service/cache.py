"""The cache's decisions: is this spec a hit, a job to join, a remembered failure, or a new job.

Each public function is one unit of work: it opens one session (which commits once, at the
end) and only after that commit does anything outside the database (enqueueing).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeGuard

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from neffcache import dispatch as dispatching
from neffcache import lifecycle, logs
from neffcache.db.models import Artifact, ArtifactUsage, Blob, Job, utcnow
from neffcache.dispatch import dispatch
from neffcache.errors import (
    BlobMissing,
    InvalidSpec,
    NeffcacheError,
    NotFound,
    ToolchainAmbiguous,
    ToolchainUnavailable,
)
from neffcache.key import key_for_spec, manifest_diff
from neffcache.lifecycle import ACTIVE_STATES, REMEMBERED_FAILURES, FailureClass, JobState, Step
from neffcache.queue import queue_for_manifest
from neffcache.rollup import LOOKUP_KINDS
from neffcache.service.auth import Grant
from neffcache.service.context import ServiceContext
from neffcache.service.events import UsageSnapshot
from neffcache.service.toolchains import RegisteredToolchain, resolve_spec
from neffcache.service.views import artifact_view, job_view
from neffcache.spec import FOLDER_FORMAT, CompileSpec

NEAREST_LIMIT = 5
NEAREST_SCAN = 200
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status_code: int
    body: dict[str, Any]


def resolve_key(ctx: ServiceContext, spec: CompileSpec) -> tuple[CompileSpec, dict[str, Any], dict[str, Any], str]:
    """(the spec with both versions filled in, that spec as answers show it, its manifest, its key)."""
    try:
        resolved = resolve_spec(ctx.registered_toolchains, spec, ctx.sdk)
    except (ToolchainUnavailable, ToolchainAmbiguous):
        # The toolchains in memory may predate a worker that just registered: ask again before
        # refusing, so a new worker's toolchain is never refused for being new.
        ctx.toolchains.clear()
        resolved = resolve_spec(ctx.registered_toolchains, spec, ctx.sdk)
    return (resolved, *_keyed(resolved))


def _keyed(resolved: CompileSpec) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A resolved spec as answers show it, and its manifest and key (computed from that)."""
    spec_out = resolved.model_dump(mode="json")
    manifest, key = key_for_spec(spec_out)
    return spec_out, manifest, key


class _NotInMemory(Exception):
    """What the warm path needs is not in memory: the request takes the database path."""


@dataclass(frozen=True)
class Resolved:
    """A spec resolved from memory: both versions filled in (as the answer shows it), its
    manifest and key."""

    spec: dict[str, Any]
    manifest: dict[str, Any]
    key: str
    # The registered toolchains it was resolved against; None when the spec named both versions
    # and needed none. The resolution holds while ctx.toolchains holds that same list.
    toolchains: list[RegisteredToolchain] | None

    def holds(self, ctx: ServiceContext) -> bool:
        return self.toolchains is None or ctx.toolchains.get(ctx.ALL_TOOLCHAINS) is self.toolchains


def resolve_in_memory(ctx: ServiceContext, spec: CompileSpec) -> Resolved | None:
    """resolve_key without the database, or None when it would need it, or refuse the spec
    (the database path then answers, and says why)."""
    consulted: list[list[RegisteredToolchain]] = []

    def toolchains() -> list[RegisteredToolchain]:
        found = ctx.toolchains.get(ctx.ALL_TOOLCHAINS)
        if found is None:
            raise _NotInMemory
        consulted.append(found)
        return found

    try:
        resolved = resolve_spec(toolchains, spec, ctx.sdk)
    except (_NotInMemory, NeffcacheError):
        return None
    return Resolved(*_keyed(resolved), consulted[0] if consulted else None)


def warm_hit(ctx: ServiceContext, kind: str, resolved: Resolved, caller: str | None,
             source: str = "memory") -> Outcome | None:
    """The hit answered from memory alone (no database, no thread: called in the event loop), or
    None when anything it needs is not in memory or the key is not a hit: the database path
    then answers. `source` names who answered, for the metrics (the route or the hit lane)."""
    artifact = ctx.artifacts.get(resolved.key)
    snapshot = ctx.usage.get(resolved.key) if artifact is not None else None
    if artifact is None or snapshot is None:
        return None
    return _hit(ctx, kind, resolved.spec, resolved.manifest, artifact, caller, snapshot, source)


def _hit(ctx: ServiceContext, kind: str, spec_out: dict[str, Any], manifest: dict[str, Any], artifact: Artifact,
         caller: str | None, snapshot: UsageSnapshot | None = None, source: str = "memory") -> Outcome:
    """A hit's answer, for lookup and compile alike, its event recorded first (the counts it
    shows include it); with the usage `snapshot` in memory it asks the database nothing."""
    _record(ctx, kind, manifest, artifact.key, artifact, caller)
    ctx.metrics.hit_served(kind, "database" if snapshot is None else source)
    usage = artifact_hits(ctx, artifact.key) if snapshot is None else _usage_now(ctx, artifact.key, snapshot)
    return Outcome(200, {"status": "hit", "key": artifact.key, "spec": spec_out,
                         "artifact": artifact_view(artifact, usage)})


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
    if artifact is not None and kind in LOOKUP_KINDS:
        ctx.metrics.compile_seconds_saved(manifest["target"], artifact.compile_seconds)


def usage_in_memory(ctx: ServiceContext, key: str) -> dict[str, int] | None:
    """artifact_hits when its written counts were read in the last hot_cache_s; else None."""
    snapshot = ctx.usage.get(key)
    return None if snapshot is None else _usage_now(ctx, key, snapshot)


def _usage_now(ctx: ServiceContext, key: str, snapshot: UsageSnapshot) -> dict[str, int]:
    lookups, downloads = snapshot.now(ctx.events.recorded_usage(key))
    return {"lookup_hits": lookups, "downloads": downloads}


def warm_artifact(ctx: ServiceContext, key: str, grant: Grant, source: str = "memory") -> dict[str, Any] | None:
    """An artifact's view (with its counts) from memory alone, by its whole key; None when
    either is not in memory or the token may not see it (the database path refuses it)."""
    artifact = ctx.artifacts.get(key)
    usage = usage_in_memory(ctx, key) if artifact is not None else None
    if artifact is None or usage is None or not grant.allows(artifact.namespace):
        return None
    ctx.metrics.hit_served("artifact", source)
    return artifact_view(artifact, usage)


def artifact_hits(ctx: ServiceContext, key: str) -> dict[str, int]:
    """How often an artifact was used, as two counts named apart (the same two /v1/stats gives):
    `lookup_hits`, the lookups and compile requests it answered, and `downloads` of its files.
    Called with no session open: it may wait for a flush, which on SQLite waits for readers.

    The written counts (one row, by key) as read at most hot_cache_s ago, plus every event this
    process recorded since that read: exact for this process's own events, and at most
    hot_cache_s behind for other processes'."""
    def read() -> UsageSnapshot:
        def written() -> tuple[int, int]:
            with ctx.db.session() as session:
                row = session.get(ArtifactUsage, key)
                return (row.lookup_hits, row.downloads) if row is not None else (0, 0)

        return ctx.events.usage_snapshot(key, written)

    snapshot = ctx.usage.get_or_load(key, read)
    assert snapshot is not None
    return _usage_now(ctx, key, snapshot)


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
    return (job is not None and job.state == JobState.FAILED and job.failure_class in REMEMBERED_FAILURES
            and _remembered(job, ttl_s))


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
    resolved, spec_out, manifest, key = resolve_key(ctx, spec)
    with ctx.db.session() as session:  # no connection is taken unless a query needs one
        artifact = published(ctx, session, key)
    if artifact is not None:  # a hit needs no model: it is compiled already
        return _hit(ctx, "compile", spec_out, manifest, artifact, caller)
    check_farm_builds(resolved)

    def decide() -> Outcome:
        return _decide(ctx, resolved.model.digest, manifest, key, spec_out, force, caller, annotations or {})

    # A forced request acts on its key's job (reconciles it): it decides alone. Any other shares
    # the decision this process is making for its key, if it is making one (a storm of requests).
    outcome, shared = (decide(), False) if force else ctx.compile_decisions.share(key, decide)
    _record(ctx, "compile", manifest, key, None, caller)
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


def _remembered(failed: Job, ttl_s: float | None) -> bool:
    """Whether a remembered failure is still the answer: it finished less than `ttl_s` ago
    (None: for ever, until a request forces a retry)."""
    finished = failed.finished_at or failed.created_at
    return ttl_s is None or utcnow() - finished < timedelta(seconds=ttl_s)


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


def lookup(ctx: ServiceContext, spec: CompileSpec, grant: Grant) -> Outcome:
    """A hit, or NotFound with the nearest published manifests the token may see."""
    _, spec_out, manifest, key = resolve_key(ctx, spec)
    with ctx.db.session() as session:  # no connection is taken unless a query needs one
        artifact = published(ctx, session, key)
        nearest = nearest_manifests(session, manifest, grant) if artifact is None else []
    if artifact is not None:
        return _hit(ctx, "lookup", spec_out, manifest, artifact, grant.caller)
    _record(ctx, "lookup", manifest, key, None, grant.caller)
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


def record_download(ctx: ServiceContext, artifact: Artifact, caller: str | None, size: int) -> None:
    """A download of one of the artifact's files, of `size` bytes."""
    _record(ctx, "download", artifact.manifest, artifact.key, artifact, caller)
    ctx.metrics.downloaded(artifact.manifest["target"], size)
