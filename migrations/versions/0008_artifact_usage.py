"""artifact_usage: each artifact's running counts of cache events (lookup_hits, downloads),
written in batches by the service (service.events) so that an artifact's view reads one row
instead of counting its whole history. Filled from cache_events as they stand.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    usage = op.create_table(
        "artifact_usage",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("lookup_hits", sa.BigInteger(), nullable=False),
        sa.Column("downloads", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_artifact_usage"),
    )
    events = sa.table("cache_events", sa.column("key", sa.String), sa.column("kind", sa.String),
                      sa.column("outcome", sa.String))
    counts = (
        sa.select(
            events.c.key,
            sa.func.sum(sa.case((events.c.kind == "download", 0), else_=1)),
            sa.func.sum(sa.case((events.c.kind == "download", 1), else_=0)),
        )
        .where(events.c.outcome == "hit")
        .group_by(events.c.key)
    )
    op.execute(usage.insert().from_select(["key", "lookup_hits", "downloads"], counts))


def downgrade() -> None:
    op.drop_table("artifact_usage")
