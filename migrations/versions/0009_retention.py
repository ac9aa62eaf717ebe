"""A cache that runs for years: last use, pins, deletion marks, event roll-ups, GC runs.

- artifact_usage.last_used_at: an artifact's last hit or download, written with its counts in
  the event writer's batches (never on the request path); filled from cache_events here.
- blobs.last_used_at: a blob's last upload or the last job made for it; an unused blob is swept
  only once this is older than the blob TTL.
- pins, pinned_artifacts: named sets of artifacts (a deployment's lock) that are never evicted.
- object_deletions: objects marked for deletion (an evicted artifact's files, an unused blob, an
  orphan) with when they were marked; `deleting_since` is set while the GC deletes one, which
  tells a writer that dedupes on that object to check it again after its own commit.
- cache_event_hours: cache events older than the retention, counted per hour.
- retired_counts: what the GC deleted (jobs, evicted artifacts' compile times), counted, so the
  metrics counted from those tables never go down.
- maintenance_leases: one GC at a time across every worker and admin.
- gc_runs: what each GC pass did (the metrics and `neffcache stats` read the latest and the sums).
- indexes on artifact_files.digest and jobs.log_digest, which the GC's reference checks use.
- jobs.request_id: the id of the request that created a job, which its worker's log lines carry.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_usage = sa.table("artifact_usage", sa.column("key", sa.String), sa.column("last_used_at", sa.DateTime(timezone=True)))
_events = sa.table("cache_events", sa.column("key", sa.String), sa.column("at", sa.DateTime(timezone=True)),
                   sa.column("outcome", sa.String))


def upgrade() -> None:
    with op.batch_alter_table("artifact_usage") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    last_hit = (sa.select(sa.func.max(_events.c.at)).where(_events.c.key == _usage.c.key, _events.c.outcome == "hit")
                .scalar_subquery())
    op.execute(_usage.update().values(last_used_at=last_hit))
    with op.batch_alter_table("blobs") as batch:
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("artifact_files") as batch:
        batch.create_index("ix_artifact_files_digest", ["digest"])
    with op.batch_alter_table("jobs") as batch:
        batch.create_index("ix_jobs_log_digest", ["log_digest"])
        batch.add_column(sa.Column("request_id", sa.String(128), nullable=True))

    op.create_table(
        "pins",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_pins"),
    )
    op.create_table(
        "pinned_artifacts",
        sa.Column("pin_name", sa.String(128), nullable=False),
        sa.Column("artifact_key", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(["pin_name"], ["pins.name"], name="fk_pinned_artifacts_pin_name", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pin_name", "artifact_key", name="pk_pinned_artifacts"),
    )
    op.create_index("ix_pinned_artifacts_artifact_key", "pinned_artifacts", ["artifact_key"])
    op.create_table(
        "object_deletions",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("marked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleting_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("digest", name="pk_object_deletions"),
    )
    op.create_table(
        "cache_event_hours",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("compiler_name", sa.String(32), nullable=False),
        sa.Column("compiler_version", sa.String(64), nullable=False),
        sa.Column("caller", sa.String(128), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("saved_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_cache_event_hours"),
        sa.UniqueConstraint("hour", "kind", "outcome", "key", "namespace", "target", "compiler_name",
                            "compiler_version", "caller", name="uq_cache_event_hours_bucket"),
    )
    op.create_index("ix_cache_event_hours_hour", "cache_event_hours", ["hour"])
    op.create_index("ix_cache_event_hours_key", "cache_event_hours", ["key"])
    op.create_table(
        "retired_counts",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("label", sa.String(96), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "label", name="pk_retired_counts"),
    )
    op.create_table(
        "maintenance_leases",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_maintenance_leases"),
    )
    op.create_table(
        "gc_runs",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("pinned_bytes", sa.BigInteger(), nullable=False),
        sa.Column("evicted_artifacts", sa.Integer(), nullable=False),
        sa.Column("evicted_bytes", sa.BigInteger(), nullable=False),
        sa.Column("blobs_deleted", sa.Integer(), nullable=False),
        sa.Column("jobs_deleted", sa.Integer(), nullable=False),
        sa.Column("objects_marked", sa.Integer(), nullable=False),
        sa.Column("objects_deleted", sa.Integer(), nullable=False),
        sa.Column("bytes_deleted", sa.BigInteger(), nullable=False),
        sa.Column("events_rolled_up", sa.BigInteger(), nullable=False),
        sa.Column("blocked", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_gc_runs"),
    )


def downgrade() -> None:
    op.drop_table("gc_runs")
    op.drop_table("maintenance_leases")
    op.drop_table("retired_counts")
    op.drop_index("ix_cache_event_hours_key", table_name="cache_event_hours")
    op.drop_index("ix_cache_event_hours_hour", table_name="cache_event_hours")
    op.drop_table("cache_event_hours")
    op.drop_table("object_deletions")
    op.drop_index("ix_pinned_artifacts_artifact_key", table_name="pinned_artifacts")
    op.drop_table("pinned_artifacts")
    op.drop_table("pins")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("request_id")
        batch.drop_index("ix_jobs_log_digest")
    with op.batch_alter_table("artifact_files") as batch:
        batch.drop_index("ix_artifact_files_digest")
    with op.batch_alter_table("blobs") as batch:
        batch.drop_column("last_used_at")
    with op.batch_alter_table("artifact_usage") as batch:
        batch.drop_column("last_used_at")
