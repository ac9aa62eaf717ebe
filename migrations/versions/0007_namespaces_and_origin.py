"""Namespaces as a boundary, and where each artifact came from.

- api_tokens.namespaces: the namespaces a token may act in; existing tokens keep acting in every
  namespace (["*"]), as they did before namespaces were checked.
- jobs.namespace and cache_events.namespace: copied out of the key's manifest, so listings,
  stats and hits can be limited to a token's namespaces. An old event whose key has neither an
  artifact nor a job (a miss) keeps NULL: only every-namespace tokens see it.
- artifacts.origin ("farm": compiled by a worker, the artifact names its job; "pushed":
  published from elsewhere) and artifacts.origin_token (the token that asked for the compile,
  or pushed).
- an index on artifacts.namespace, which listings now filter on.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_tokens = sa.table("api_tokens", sa.column("name", sa.String), sa.column("namespaces", sa.JSON))
_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("key", sa.String), sa.column("manifest", sa.JSON),
                 sa.column("namespace", sa.String), sa.column("requested_by", sa.String))
_artifacts = sa.table("artifacts", sa.column("key", sa.String), sa.column("namespace", sa.String),
                      sa.column("job_id", sa.String), sa.column("annotations", sa.JSON),
                      sa.column("origin", sa.String), sa.column("origin_token", sa.String))
_events = sa.table("cache_events", sa.column("key", sa.String), sa.column("namespace", sa.String))


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("namespaces", sa.JSON(), nullable=True))
    op.execute(_tokens.update().values(namespaces=["*"]))
    with op.batch_alter_table("api_tokens") as batch:
        batch.alter_column("namespaces", existing_type=sa.JSON(), nullable=False)

    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("namespace", sa.String(64), nullable=True))
    # The manifest is JSON, read the same way on every backend: row by row, in Python.
    for job_id, manifest in bind.execute(sa.select(_jobs.c.id, _jobs.c.manifest)).all():
        bind.execute(_jobs.update().where(_jobs.c.id == job_id).values(namespace=manifest["namespace"]))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("namespace", existing_type=sa.String(64), nullable=False)
        batch.create_index("ix_jobs_namespace", ["namespace"])

    with op.batch_alter_table("cache_events") as batch:
        batch.add_column(sa.Column("namespace", sa.String(64), nullable=True))
        batch.create_index("ix_cache_events_namespace", ["namespace"])
    from_artifact = sa.select(_artifacts.c.namespace).where(_artifacts.c.key == _events.c.key).scalar_subquery()
    op.execute(_events.update().values(namespace=from_artifact))
    from_job = (sa.select(_jobs.c.namespace).where(_jobs.c.key == _events.c.key).limit(1).scalar_subquery())
    op.execute(_events.update().where(_events.c.namespace.is_(None)).values(namespace=from_job))

    with op.batch_alter_table("artifacts") as batch:
        batch.add_column(sa.Column("origin", sa.String(8), nullable=True))
        batch.add_column(sa.Column("origin_token", sa.String(128), nullable=True))
        batch.create_index("ix_artifacts_namespace", ["namespace"])
    requester = sa.select(_jobs.c.requested_by).where(_jobs.c.id == _artifacts.c.job_id).scalar_subquery()
    op.execute(_artifacts.update().where(_artifacts.c.job_id.is_not(None))
               .values(origin="farm", origin_token=requester))
    pushed = bind.execute(sa.select(_artifacts.c.key, _artifacts.c.annotations)
                          .where(_artifacts.c.job_id.is_(None))).all()
    for key, annotations in pushed:
        bind.execute(_artifacts.update().where(_artifacts.c.key == key)
                     .values(origin="pushed", origin_token=(annotations or {}).get("published_by")))
    with op.batch_alter_table("artifacts") as batch:
        batch.alter_column("origin", existing_type=sa.String(8), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("artifacts") as batch:
        batch.drop_index("ix_artifacts_namespace")
        batch.drop_column("origin_token")
        batch.drop_column("origin")
    with op.batch_alter_table("cache_events") as batch:
        batch.drop_index("ix_cache_events_namespace")
        batch.drop_column("namespace")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_namespace")
        batch.drop_column("namespace")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("namespaces")
