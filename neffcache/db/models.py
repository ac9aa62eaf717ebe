"""SQLAlchemy models: blobs, jobs, artifacts and their files, cache events, workers.

Tables are created only by the Alembic migrations in migrations/; these classes describe them.
Shared by the service and the workers (both write here), never imported by the client.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone, so we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_name)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Blob(Base):
    __tablename__ = "blobs"
    digest: Mapped[str] = mapped_column(String(71), primary_key=True)  # "sha256:<hex>"
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Its last upload, or the last job made for it (NULL: created_at): an unused blob is swept
    # only once this is older than NEFFCACHE_GC_BLOB_TTL_S (neffcache.gc).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# The one-active-job-per-key index's predicate, as migration 0001 created it.
ACTIVE_JOB_PREDICATE = "state IN ('queued', 'running')"


def _manifest_namespace(context: Any) -> str:
    """A row's namespace, copied out of its manifest when not given (the key already holds it)."""
    namespace: str = context.get_current_parameters()["manifest"]["namespace"]
    return namespace


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), index=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The manifest's namespace, as a column so that listings filter on a token's namespaces.
    namespace: Mapped[str] = mapped_column(String(64), index=True, default=_manifest_namespace)
    queue: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), index=True)  # a lifecycle.JobState
    failure_class: Mapped[str | None] = mapped_column(String(32))
    message: Mapped[str | None] = mapped_column(Text)
    log_tail: Mapped[str | None] = mapped_column(Text)
    log_digest: Mapped[str | None] = mapped_column(String(71), index=True)
    # Bytes the current attempt's log has (so far, while it runs): where `log_tail` ends.
    log_bytes: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    requested_by: Mapped[str | None] = mapped_column(String(128))
    # The id of the request that created the job (its X-Request-Id, neffcache.logs): the
    # worker's log lines of the job carry it, so a job is followed from the API to the worker.
    request_id: Mapped[str | None] = mapped_column(String(128))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    annotations: Mapped[dict[str, str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A retry waits until then; the workers' sweep enqueues it when due.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        # At most one queued or running job per key, enforced by the database itself so that
        # concurrent submissions of one key cannot both create a job. The predicate is the
        # migrated schema's, as its migration wrote it (tests/unit/neffcache/test_lifecycle.py checks that it
        # names exactly lifecycle.ACTIVE_STATES, which a new active state would need a migration for).
        Index(
            "uq_jobs_active_key",
            "key",
            unique=True,
            postgresql_where=text(ACTIVE_JOB_PREDICATE),
            sqlite_where=text(ACTIVE_JOB_PREDICATE),
        ),
    )


ORIGIN_FARM, ORIGIN_PUSHED = "farm", "pushed"
ORIGINS = (ORIGIN_FARM, ORIGIN_PUSHED)


class Artifact(Base):
    __tablename__ = "artifacts"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    namespace: Mapped[str] = mapped_column(String(64), index=True)
    model_digest: Mapped[str] = mapped_column(String(71), index=True)
    target: Mapped[str] = mapped_column(String(16))
    compiler_name: Mapped[str] = mapped_column(String(32))
    compiler_version: Mapped[str] = mapped_column(String(64))
    runtime_version: Mapped[str] = mapped_column(String(64))
    compile_seconds: Mapped[float] = mapped_column(Float)
    job_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Not part of the key: where it came from (e.g. the libneuronxla module folder name).
    annotations: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # Who made the bytes: "farm" (a worker compiled them; job_id says which job) or "pushed"
    # (published from elsewhere); origin_token: the token that asked for the compile or pushed.
    origin: Mapped[str] = mapped_column(String(8))
    origin_token: Mapped[str | None] = mapped_column(String(128))
    files: Mapped[list[ArtifactFile]] = relationship(
        back_populates="artifact", order_by="ArtifactFile.name", lazy="selectin"
    )

    @classmethod
    def from_manifest(cls, key: str, manifest: dict[str, Any], files: list[ArtifactFile],
                      compile_seconds: float, job_id: str | None,
                      annotations: dict[str, str] | None, origin_token: str | None = None) -> Artifact:
        """The row for a key: the columns the listings filter on are copied out of the manifest.
        A farm artifact always names its job and a pushed one never does, so `job_id` says which."""
        return cls(
            key=key,
            manifest=manifest,
            namespace=manifest["namespace"],
            model_digest=manifest["model"]["digest"],
            target=manifest["target"],
            compiler_name=manifest["compiler"]["name"],
            compiler_version=manifest["compiler"]["version"],
            runtime_version=manifest["runtime"]["version"],
            compile_seconds=compile_seconds,
            job_id=job_id,
            created_at=utcnow(),
            annotations=annotations,
            origin=ORIGIN_FARM if job_id is not None else ORIGIN_PUSHED,
            origin_token=origin_token,
            files=files,
        )


class ArtifactFile(Base):
    __tablename__ = "artifact_files"
    artifact_key: Mapped[str] = mapped_column(ForeignKey("artifacts.key", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    digest: Mapped[str] = mapped_column(String(71), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    # For a NEFF: the header fields a runtime cares about (neffcache.neff.NeffHeader.summary).
    neff: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    artifact: Mapped[Artifact] = relationship(back_populates="files")


class CacheEvent(Base):
    """One lookup, compile request or download, with its outcome: the source of stats and hits."""

    __tablename__ = "cache_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))  # lookup | compile | download
    outcome: Mapped[str] = mapped_column(String(8))  # hit | miss
    key: Mapped[str] = mapped_column(String(64), index=True)
    # The key's namespace (NULL only for events recorded before namespaces were kept, whose key
    # had no artifact or job to tell it: those are shown only to every-namespace tokens).
    namespace: Mapped[str | None] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(16))
    compiler_name: Mapped[str] = mapped_column(String(32))
    compiler_version: Mapped[str] = mapped_column(String(64))
    caller: Mapped[str | None] = mapped_column(String(128))
    # For a hit: the compile time the caller did not spend.
    saved_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class ArtifactUsage(Base):
    """An artifact's running counts of cache events (written in batches by service.events): what
    its view shows, read by primary key whatever the length of the history."""

    __tablename__ = "artifact_usage"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    lookup_hits: Mapped[int] = mapped_column(BigInteger)
    downloads: Mapped[int] = mapped_column(BigInteger)
    # The newest hit or download among the flushed events (NULL: never used): the GC's LRU order.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Pin(Base):
    """A named set of artifacts that the GC never evicts (a deployment's lock file): `neffcache pin`."""

    __tablename__ = "pins"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(128))  # the token that made it
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Protects nothing from then on (the GC deletes it); None: until removed.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    entries: Mapped[list[PinnedArtifact]] = relationship(
        back_populates="pin", order_by="PinnedArtifact.artifact_key", lazy="selectin", cascade="all, delete-orphan",
        passive_deletes=True,
    )


class PinnedArtifact(Base):
    __tablename__ = "pinned_artifacts"
    pin_name: Mapped[str] = mapped_column(ForeignKey("pins.name", ondelete="CASCADE"), primary_key=True)
    artifact_key: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    pin: Mapped[Pin] = relationship(back_populates="entries")


class ObjectDeletion(Base):
    """An object marked for deletion (bare sha256 hex), deleted by the GC once `marked_at` is older
    than the grace period and no row references it. `deleting_since` is set while the GC deletes
    it: a writer that found the object already stored checks again after its own commit
    (neffcache.object_deletion)."""

    __tablename__ = "object_deletions"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int | None] = mapped_column(BigInteger)
    reason: Mapped[str] = mapped_column(String(32))  # evicted | blob | job_log | orphan
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime)
    deleting_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


class CacheEventHour(Base):
    """Cache events older than NEFFCACHE_EVENT_RETENTION_S, counted per hour and per everything a
    stat groups by ('' for a caller or namespace that was not recorded)."""

    __tablename__ = "cache_event_hours"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(8))
    key: Mapped[str] = mapped_column(String(64), index=True)
    namespace: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(16))
    compiler_name: Mapped[str] = mapped_column(String(32))
    compiler_version: Mapped[str] = mapped_column(String(64))
    caller: Mapped[str] = mapped_column(String(128))
    count: Mapped[int] = mapped_column(BigInteger)
    saved_seconds: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("hour", "kind", "outcome", "key", "namespace", "target", "compiler_name",
                         "compiler_version", "caller", name="uq_cache_event_hours_bucket"),
    )


class RetiredCount(Base):
    """What the GC deleted, counted (neffcache.retired): the metrics counted from the jobs and
    artifacts add these back, so they never go down."""

    __tablename__ = "retired_counts"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    label: Mapped[str] = mapped_column(String(96), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger)
    total: Mapped[float] = mapped_column(Float)


class MaintenanceLease(Base):
    """Who runs a maintenance pass (the GC) until when: one at a time across every host."""

    __tablename__ = "maintenance_leases"
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class GcRun(Base):
    """What one GC pass found and did (neffcache.gc): the metrics and stats read these."""

    __tablename__ = "gc_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    holder: Mapped[str] = mapped_column(String(255))
    stored_bytes: Mapped[int] = mapped_column(BigInteger)
    pinned_bytes: Mapped[int] = mapped_column(BigInteger)
    evicted_artifacts: Mapped[int] = mapped_column(Integer)
    evicted_bytes: Mapped[int] = mapped_column(BigInteger)
    blobs_deleted: Mapped[int] = mapped_column(Integer)
    jobs_deleted: Mapped[int] = mapped_column(Integer)
    objects_marked: Mapped[int] = mapped_column(Integer)
    objects_deleted: Mapped[int] = mapped_column(Integer)
    bytes_deleted: Mapped[int] = mapped_column(BigInteger)
    events_rolled_up: Mapped[int] = mapped_column(BigInteger)
    # Why eviction stopped short of the quota (pinned artifacts alone exceed it), else None.
    blocked: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)


class Worker(Base):
    __tablename__ = "workers"
    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    compiler_name: Mapped[str] = mapped_column(String(32))
    compiler_version: Mapped[str] = mapped_column(String(64))
    runtime_name: Mapped[str] = mapped_column(String(32))
    runtime_version: Mapped[str] = mapped_column(String(64))
    toolchain: Mapped[dict[str, Any]] = mapped_column(JSON)
    queues: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16))  # a lifecycle.WorkerState (lifecycle.heard_since)
    current_job: Mapped[str | None] = mapped_column(String(36))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_heartbeat: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class ApiToken(Base):
    """A bearer token: only its sha256 is stored; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))  # read | write | publish | admin (neffcache.tokens)
    # The namespaces it may act in; ["*"]: every namespace (neffcache.tokens.ALL_NAMESPACES).
    namespaces: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Refused (401) from then on; None: never expires.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a request last carried it, to within a minute (not written on every request).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
