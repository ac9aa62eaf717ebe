"""Tables come only from the Alembic migrations: upgrade, downgrade, upgrade on each database,
and the migrated schema matches the models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from neffcache.db import migrate
from neffcache.db.models import Base
from neffcache.db.session import normalise_url

TABLES = {"blobs", "jobs", "artifacts", "artifact_files", "cache_events", "workers", "api_tokens"}


def _databases() -> list[str]:
    kinds = ["sqlite"]
    if os.environ.get("NEFFCACHE_TEST_DATABASE_URL", "").startswith("postgres"):
        kinds.append("postgres")
    return kinds


@pytest.fixture(params=_databases())
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own (not the one the running stack uses), dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    server = normalise_url(os.environ["NEFFCACHE_TEST_DATABASE_URL"])
    name = f"neffcache_migrations_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(normalise_url(url))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database: str) -> None:
    assert _tables(empty_database) == set()
    migrate.upgrade(empty_database)
    assert _tables(empty_database) == TABLES
    migrate.downgrade(empty_database, "base")
    assert _tables(empty_database) == set()
    migrate.upgrade(empty_database)
    assert _tables(empty_database) == TABLES


def test_migrated_schema_matches_the_models(empty_database: str) -> None:
    migrate.upgrade(empty_database)
    engine = create_engine(normalise_url(empty_database))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_one_active_job_per_key_is_enforced_by_the_database(empty_database: str) -> None:
    migrate.upgrade(empty_database)
    engine = create_engine(normalise_url(empty_database))
    insert = text(
        "INSERT INTO jobs (id, key, manifest, queue, state, attempts, max_attempts, cancel_requested, created_at) "
        "VALUES (:id, :key, '{}', 'q', :state, 0, 1, false, CURRENT_TIMESTAMP)"
    )
    try:
        with engine.begin() as conn:
            conn.execute(insert, {"id": "a", "key": "k", "state": "failed"})
            conn.execute(insert, {"id": "b", "key": "k", "state": "queued"})
        with pytest.raises(Exception, match="(?i)unique"):
            with engine.begin() as conn:
                conn.execute(insert, {"id": "c", "key": "k", "state": "running"})
    finally:
        engine.dispose()
