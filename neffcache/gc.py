"""The garbage collection pass: evict by TTL and quota, sweep unused blobs, old jobs and orphan
objects, delete what was marked a grace period ago, roll up old cache events, record the run.

Run by `neffcache-admin gc` and, every NEFFCACHE_GC_INTERVAL_S, by one of the workers
(workers/maintenance.py); a lease in the database keeps it to one pass at a time.

Nothing in use is deleted (README, "Quota, eviction and GC"):
- pinned artifacts are never candidates, and an eviction re-checks the pin under the artifact's
  row lock (a pin being added takes the same row's share lock: neffcache.pins);
- an artifact used since the plan was made is skipped;
- evicting removes the artifact's row at once (lookups miss, new compiles of its key may start)
  but its objects only a grace period later, longer than a presigned URL lives, so a pull that
  already has its URLs finishes;
- objects are deleted only when no row names them, by the protocol in neffcache.object_deletion,
  which a writer that dedupes on an object being deleted completes by storing it again;
- a blob is deleted only when no artifact and no active job names it and it has not been
  uploaded or compiled for NEFFCACHE_GC_BLOB_TTL_S (a compile request touches it under the same
  row lock this pass deletes it under).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from neffcache import invalidation, pins, retired, rollup
from neffcache.db.models import (
    Artifact,
    ArtifactFile,
    ArtifactUsage,
    Blob,
    GcRun,
    Job,
    MaintenanceLease,
    ObjectDeletion,
    UTCDateTime,
    utcnow,
)
from neffcache.db.session import Database
from neffcache.digests import bare_hex
from neffcache.eviction import Blocked, Candidate, Eviction, Plan, Policy, plan_evictions
from neffcache.lifecycle import ACTIVE_STATES, FINAL_STATES
from neffcache.object_deletion import MarkReason, delete_due, due, mark
from neffcache.settings import Settings
from neffcache.storage.base import PROBE_BYTES, ObjectStore

log = logging.getLogger(__name__)

LEASE_NAME = "gc"
# A pass holds the lease this long at most; one that dies frees it for the next after that.
LEASE_S = 3600.0
# Rows deleted per transaction where a pass deletes many (jobs), so none holds locks for long.
BATCH = 500
_PROBE_DIGEST = hashlib.sha256(PROBE_BYTES).hexdigest()

def blocked_of(run: GcRun) -> list[Blocked]:
    """The quotas a recorded pass could not meet."""
    return [Blocked(**b) for b in json.loads(run.blocked)] if run.blocked else []


def policy_of(settings: Settings) -> Policy:
    return Policy(settings.gc_quota_bytes, dict(settings.gc_namespace_quota_bytes), settings.gc_ttl_s)


# --- the lease ----------------------------------------------------------------------------------

def acquire_lease(db: Database, holder: str, now: datetime, duration_s: float = LEASE_S) -> str | None:
    """Take the GC lease for `holder`: None when taken, else who holds it."""
    until = now + timedelta(seconds=duration_s)
    with db.session() as session:
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        session.execute(insert(MaintenanceLease).values(name=LEASE_NAME, holder=holder, expires_at=until)
                        .on_conflict_do_nothing(index_elements=["name"]))
        session.execute(update(MaintenanceLease).where(
            MaintenanceLease.name == LEASE_NAME,
            or_(MaintenanceLease.holder == holder, MaintenanceLease.expires_at < now))
            .values(holder=holder, expires_at=until).execution_options(synchronize_session=False))
        current = session.get(MaintenanceLease, LEASE_NAME)
        assert current is not None
        return None if current.holder == holder else current.holder


def release_lease(db: Database, holder: str) -> None:
    with db.session() as session:
        session.execute(delete(MaintenanceLease).where(MaintenanceLease.name == LEASE_NAME,
                                                       MaintenanceLease.holder == holder))


# --- what is stored -------------------------------------------------------------------------------

def artifact_sizes() -> Any:
    """Each artifact's bytes (the sum of its files' sizes), as a subquery (artifact_key, size)."""
    return (select(ArtifactFile.artifact_key, func.sum(ArtifactFile.size).label("size"))
            .group_by(ArtifactFile.artifact_key).subquery())


def candidates(session: Session, now: datetime) -> list[Candidate]:
    """Every artifact as the eviction plan sees it. Never used: its last use is its publication."""
    sizes = artifact_sizes()
    rows = session.execute(
        select(Artifact.key, Artifact.namespace, func.coalesce(sizes.c.size, 0),
               func.coalesce(ArtifactUsage.last_used_at, Artifact.created_at, type_=UTCDateTime),
               pins.pinned_clause(Artifact.key, now))
        .outerjoin(sizes, sizes.c.artifact_key == Artifact.key)
        .outerjoin(ArtifactUsage, ArtifactUsage.key == Artifact.key))
    return [Candidate(key, namespace, int(size), last_used, bool(is_pinned))
            for key, namespace, size, last_used, is_pinned in rows]


# --- the steps ---------------------------------------------------------------------------------

def evict(db: Database, eviction: Eviction, now: datetime) -> bool:
    """Delete the artifact's rows and mark its files, in one transaction under its row lock,
    unless it was pinned or used since the plan (or is gone). Whether it was evicted."""
    with db.session() as session:
        # The row locked, then the pins read in a statement of their own (neffcache.pins): a pin
        # being added either committed before (seen here) or waits for this and finds no artifact.
        if not pins.lock_for_eviction(session, [eviction.key], now):
            return False
        used = session.scalar(select(ArtifactUsage.last_used_at).where(ArtifactUsage.key == eviction.key))
        if used is not None and used > eviction.last_used:
            return False
        files = session.execute(select(ArtifactFile.digest, ArtifactFile.size)
                                .where(ArtifactFile.artifact_key == eviction.key)).all()
        seconds = session.scalar(select(Artifact.compile_seconds).where(Artifact.key == eviction.key))
        retired.retire_artifact(session, float(seconds or 0.0))
        session.execute(delete(ArtifactFile).where(ArtifactFile.artifact_key == eviction.key))
        session.execute(delete(ArtifactUsage).where(ArtifactUsage.key == eviction.key))
        session.execute(delete(Artifact).where(Artifact.key == eviction.key))
        mark(session, {bare_hex(d): s for d, s in files}.items(), MarkReason.EVICTED, now)
    return True


def _active_models(session: Session) -> set[str]:
    """The model digests of queued and running jobs (few: they are read from their manifests)."""
    manifests = session.scalars(select(Job.manifest).where(Job.state.in_([s.value for s in ACTIVE_STATES])))
    return {m["model"]["digest"] for m in manifests}


def _unused_blob(now: datetime, ttl_s: float) -> ColumnElement[bool]:
    return and_(func.coalesce(Blob.last_used_at, Blob.created_at) < now - timedelta(seconds=ttl_s),
                ~exists().where(Artifact.model_digest == Blob.digest),
                ~exists().where(ArtifactFile.digest == Blob.digest))


def unused_blobs(session: Session, now: datetime, ttl_s: float) -> list[tuple[str, int]]:
    """Blobs no artifact and no active job names, not uploaded or compiled for `ttl_s`."""
    active = _active_models(session)
    rows = session.execute(select(Blob.digest, Blob.size).where(_unused_blob(now, ttl_s))).all()
    return [(d, s) for d, s in rows if d not in active]


def delete_blob(db: Database, digest: str, now: datetime, ttl_s: float) -> bool:
    """Delete a blob's row and mark its object, under the row's lock, if it is still unused."""
    with db.session() as session:
        if session.execute(select(Blob.digest).where(Blob.digest == digest).with_for_update()).first() is None:
            return False
        size = session.scalar(select(Blob.size).where(Blob.digest == digest, _unused_blob(now, ttl_s)))
        if size is None or digest in _active_models(session):
            return False
        session.execute(delete(Blob).where(Blob.digest == digest))
        mark(session, [(bare_hex(digest), size)], MarkReason.BLOB, now)
    return True


def _old_jobs(now: datetime, retention_s: float) -> ColumnElement[bool]:
    return and_(Job.state.in_([s.value for s in FINAL_STATES]),
                func.coalesce(Job.finished_at, Job.created_at) < now - timedelta(seconds=retention_s),
                ~exists().where(Artifact.key == Job.key))


def count_old_jobs(session: Session, now: datetime, retention_s: float) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(_old_jobs(now, retention_s))) or 0)


def delete_old_jobs(db: Database, now: datetime, retention_s: float) -> int:
    """Finished jobs whose key has no artifact, past their retention, with their logs marked."""
    deleted = 0
    while True:
        with db.session() as session:
            # Locked: the rows counted as retired are exactly the rows deleted.
            batch = session.execute(select(Job.id, Job.log_digest, Job.log_bytes, Job.state, Job.failure_class)
                                    .where(_old_jobs(now, retention_s)).limit(BATCH).with_for_update()).all()
            if not batch:
                return deleted
            session.execute(delete(Job).where(Job.id.in_([row.id for row in batch]))
                            .execution_options(synchronize_session=False))
            retired.retire_jobs(session, [(row.state, row.failure_class) for row in batch])
            mark(session, [(bare_hex(row.log_digest), row.log_bytes) for row in batch if row.log_digest],
                 MarkReason.JOB_LOG, now)
            deleted += len(batch)


def named_objects(session: Session) -> set[str]:
    """Every object a row names or a mark holds (bare hex), and the workers' probe object."""
    named = {_PROBE_DIGEST}
    for column in (ArtifactFile.digest, Blob.digest, Job.log_digest):
        named.update(bare_hex(d) for d in session.scalars(select(column).where(column.is_not(None)).distinct()) if d)
    named.update(session.scalars(select(ObjectDeletion.digest)))
    return named


def orphans(db: Database, store: ObjectStore, now: datetime, grace_s: float) -> list[tuple[str, int, datetime]]:
    """Stored objects no row names, written more than the grace period ago: what a publish that
    died between its objects and its row left, never served to anyone."""
    with db.session() as session:
        named = named_objects(session)
    before = now - timedelta(seconds=grace_s)
    return [(o.digest, o.size, o.modified_at) for o in store.iter_objects()
            if o.digest not in named and o.modified_at is not None and o.modified_at < before]


def mark_orphans(db: Database, found: list[tuple[str, int, datetime]]) -> None:
    """Marked as of when they were written: they have been no row's for longer than the grace
    already, so they are due in this same pass (a writer deduping on one still completes it)."""
    with db.session() as session:
        for digest, size, written in found:
            mark(session, [(digest, size)], MarkReason.ORPHAN, written)


def expire_pins(db: Database, now: datetime) -> int:
    with db.session() as session:
        return len(pins.remove_expired(session, now))


# --- the pass ------------------------------------------------------------------------------------

@dataclass
class GcReport:
    """What a pass found and did (or, dry, would do)."""

    holder: str
    dry_run: bool
    started_at: datetime
    finished_at: datetime | None = None
    skipped: str | None = None  # why nothing was done (another holds the lease)
    plan: Plan | None = None
    evicted: list[Eviction] = field(default_factory=list)
    blobs: list[tuple[str, int]] = field(default_factory=list)
    jobs: int = 0
    orphans: list[tuple[str, int]] = field(default_factory=list)
    objects_due: list[tuple[str, int]] = field(default_factory=list)  # dry run: marked and past the grace
    objects_deleted: int = 0
    bytes_deleted: int = 0
    objects_rescued: int = 0
    pins_expired: int = 0
    events_rolled_up: int = 0

    @property
    def blocked(self) -> list[Blocked]:
        return self.plan.blocked if self.plan is not None else []

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "holder": self.holder, "dry_run": self.dry_run, "skipped": self.skipped,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "stored_bytes": plan.stored_bytes if plan else None,
            "pinned_bytes": plan.pinned_bytes if plan else None,
            "kept_bytes": plan.stored_bytes - sum(e.size for e in self.evicted) if plan else None,
            "evicted": [{"key": e.key, "namespace": e.namespace, "bytes": e.size, "reason": e.reason.value,
                         "last_used": e.last_used.isoformat()} for e in self.evicted],
            "evicted_bytes": sum(e.size for e in self.evicted),
            "blobs": [{"digest": d, "bytes": s} for d, s in self.blobs],
            "jobs": self.jobs,
            "orphans": [{"digest": d, "bytes": s} for d, s in self.orphans],
            "objects_due": [{"digest": d, "bytes": s} for d, s in self.objects_due],
            "objects_deleted": self.objects_deleted,
            "bytes_deleted": self.bytes_deleted,
            "objects_rescued": self.objects_rescued,
            "pins_expired": self.pins_expired,
            "events_rolled_up": self.events_rolled_up,
            "blocked": [b.describe() for b in self.blocked],
        }

    def summary(self) -> str:
        if self.skipped:
            return f"gc: skipped: {self.skipped}"
        verb = "would evict" if self.dry_run else "evicted"
        gone = "would delete" if self.dry_run else "deleted"
        due_bytes = sum(s for _, s in self.objects_due) if self.dry_run else self.bytes_deleted
        due_count = len(self.objects_due) if self.dry_run else self.objects_deleted
        kept = (self.plan.stored_bytes - sum(e.size for e in self.evicted)) if self.plan else 0
        parts = [
            f"{verb} {len(self.evicted)} artifacts ({sum(e.size for e in self.evicted)} bytes; {kept} bytes kept, "
            f"{self.plan.pinned_bytes if self.plan else 0} pinned)",
            f"{len(self.blobs)} unused blobs ({sum(s for _, s in self.blobs)} bytes)",
            f"{self.jobs} old jobs",
            f"{len(self.orphans)} orphan objects ({sum(s for _, s in self.orphans)} bytes)",
            f"{gone} {due_count} objects past the grace period ({due_bytes} bytes)",
        ]
        if not self.dry_run:
            parts.append(f"rolled up {self.events_rolled_up} cache events")
        line = "gc: " + "; ".join(parts)
        return line + "".join(f"\ngc: blocked: {b.describe()}" for b in self.blocked)


def run_gc(db: Database, store: ObjectStore, settings: Settings, *, holder: str, now: datetime | None = None,
           dry_run: bool = False, announce: invalidation.Announce = invalidation.nobody) -> GcReport:
    """One pass. `now` is the pass's clock (tests move it); `announce` tells the API processes
    which artifacts are gone."""
    now = now or utcnow()
    report = GcReport(holder, dry_run, now)
    if not dry_run:
        other = acquire_lease(db, holder, now)
        if other is not None:
            report.skipped = f"another pass holds the lease ({other})"
            return report
    try:
        _run(db, store, settings, report, now, announce)
    finally:
        if not dry_run:
            release_lease(db, holder)
    report.finished_at = utcnow()
    return report


def _run(db: Database, store: ObjectStore, settings: Settings, report: GcReport, now: datetime,
         announce: invalidation.Announce) -> None:
    with db.session() as session:
        report.plan = plan = plan_evictions(candidates(session, now), policy_of(settings), now)
    for blocked in plan.blocked:
        log.warning("gc: eviction stops short of the quota: %s", blocked.describe())
    if report.dry_run:
        report.evicted = list(plan.evictions)
        with db.session() as session:
            report.blobs = unused_blobs(session, now, settings.gc_blob_ttl_s)
            report.jobs = count_old_jobs(session, now, settings.gc_job_retention_s)
            report.objects_due = [(m.digest, m.size or 0) for m in due(session, now, settings.gc_grace_s)]
        found = orphans(db, store, now, settings.gc_grace_s)
        report.orphans = [(d, s) for d, s, _ in found]
        report.objects_due += report.orphans
        return
    for eviction in plan.evictions:
        if evict(db, eviction, now):
            report.evicted.append(eviction)
            announce(invalidation.Invalidation.artifact(eviction.key))
    report.pins_expired = expire_pins(db, now)
    with db.session() as session:
        unused = unused_blobs(session, now, settings.gc_blob_ttl_s)
    report.blobs = [(d, s) for d, s in unused if delete_blob(db, d, now, settings.gc_blob_ttl_s)]
    report.jobs = delete_old_jobs(db, now, settings.gc_job_retention_s)
    found = orphans(db, store, now, settings.gc_grace_s)
    mark_orphans(db, found)
    report.orphans = [(d, s) for d, s, _ in found]
    deleted = delete_due(db, store, now, settings.gc_grace_s)
    report.objects_deleted, report.bytes_deleted, report.objects_rescued = (deleted.objects, deleted.bytes,
                                                                            deleted.rescued)
    report.events_rolled_up = rollup.roll_up_events(db, now - timedelta(seconds=settings.event_retention_s))
    _record(db, report)
    log.info("%s", report.summary())


def _record(db: Database, report: GcReport) -> None:
    plan = report.plan
    assert plan is not None
    evicted_bytes = sum(e.size for e in report.evicted)
    with db.session() as session:
        session.add(GcRun(
            started_at=report.started_at, finished_at=utcnow(), holder=report.holder,
            stored_bytes=plan.stored_bytes - evicted_bytes, pinned_bytes=plan.pinned_bytes,
            evicted_artifacts=len(report.evicted), evicted_bytes=evicted_bytes, blobs_deleted=len(report.blobs),
            jobs_deleted=report.jobs, objects_marked=len(report.orphans), objects_deleted=report.objects_deleted,
            bytes_deleted=report.bytes_deleted, events_rolled_up=report.events_rolled_up,
            blocked=json.dumps([dataclasses.asdict(b) for b in plan.blocked]) if plan.blocked else None,
        ))
