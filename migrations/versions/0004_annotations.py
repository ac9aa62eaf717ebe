"""Annotations (not part of the key) on jobs and artifacts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("jobs", "artifacts"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("annotations", sa.JSON, nullable=True))


def downgrade() -> None:
    for table in ("artifacts", "jobs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("annotations")
