"""NEFF header fields recorded with each published NEFF file.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("artifact_files") as batch:
        batch.add_column(sa.Column("neff", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifact_files") as batch:
        batch.drop_column("neff")
