"""Initial schema: blobs, jobs, artifacts, artifact files, cache events, workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE = "state IN ('queued', 'running')"


def _ts(name: str, nullable: bool = True, index: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, index=index)


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("digest", sa.String(71), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        _ts("created_at", nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("queue", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failure_class", sa.String(32)),
        sa.Column("message", sa.Text),
        sa.Column("log_tail", sa.Text),
        sa.Column("log_digest", sa.String(71)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(255)),
        sa.Column("requested_by", sa.String(128)),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        _ts("created_at", nullable=False),
        _ts("enqueued_at"),
        _ts("not_before"),
        _ts("started_at"),
        _ts("finished_at"),
    )
    op.create_index("ix_jobs_key", "jobs", ["key"])
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    # At most one queued or running job per key: the database enforces it, not only the code.
    op.create_index(
        "uq_jobs_active_key",
        "jobs",
        ["key"],
        unique=True,
        postgresql_where=sa.text(ACTIVE),
        sqlite_where=sa.text(ACTIVE),
    )
    op.create_table(
        "artifacts",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("manifest", sa.JSON, nullable=False),
        sa.Column("namespace", sa.String(64), nullable=False),
        sa.Column("model_digest", sa.String(71), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("compiler_name", sa.String(32), nullable=False),
        sa.Column("compiler_version", sa.String(64), nullable=False),
        sa.Column("runtime_version", sa.String(64), nullable=False),
        sa.Column("compile_seconds", sa.Float, nullable=False),
        sa.Column("job_id", sa.String(36)),
        _ts("created_at", nullable=False),
    )
    op.create_index("ix_artifacts_model_digest", "artifacts", ["model_digest"])
    op.create_index("ix_artifacts_created_at", "artifacts", ["created_at"])
    op.create_table(
        "artifact_files",
        sa.Column(
            "artifact_key",
            sa.String(64),
            sa.ForeignKey("artifacts.key", ondelete="CASCADE", name="fk_artifact_files_artifact_key"),
            primary_key=True,
        ),
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "cache_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _ts("at", nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(8), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("target", sa.String(16), nullable=False),
        sa.Column("compiler_name", sa.String(32), nullable=False),
        sa.Column("compiler_version", sa.String(64), nullable=False),
        sa.Column("caller", sa.String(128)),
        sa.Column("saved_seconds", sa.Float, nullable=False),
    )
    op.create_index("ix_cache_events_at", "cache_events", ["at"])
    op.create_index("ix_cache_events_key", "cache_events", ["key"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("compiler_name", sa.String(32), nullable=False),
        sa.Column("compiler_version", sa.String(64), nullable=False),
        sa.Column("runtime_name", sa.String(32), nullable=False),
        sa.Column("runtime_version", sa.String(64), nullable=False),
        sa.Column("toolchain", sa.JSON, nullable=False),
        sa.Column("queues", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("current_job", sa.String(36)),
        _ts("started_at", nullable=False),
        _ts("last_heartbeat", nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index("ix_cache_events_key", "cache_events")
    op.drop_index("ix_cache_events_at", "cache_events")
    op.drop_table("cache_events")
    op.drop_table("artifact_files")
    op.drop_index("ix_artifacts_created_at", "artifacts")
    op.drop_index("ix_artifacts_model_digest", "artifacts")
    op.drop_table("artifacts")
    op.drop_index("uq_jobs_active_key", "jobs")
    op.drop_index("ix_jobs_created_at", "jobs")
    op.drop_index("ix_jobs_state", "jobs")
    op.drop_index("ix_jobs_key", "jobs")
    op.drop_table("jobs")
    op.drop_table("blobs")
