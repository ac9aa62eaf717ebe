"""Tables come only from the Alembic migrations: upgrade, downgrade, upgrade on each database,
and the migrated schema matches the models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from neffcache.db import migrate
from neffcache.db.models import Base
from neffcache.db.session import normalise_url
from tests.support.databases import database_kinds
from tests.support.databases import empty_database as empty_database_of

TABLES = {"blobs", "jobs", "artifacts", "artifact_files", "cache_events", "workers", "api_tokens", "artifact_usage",
          "pins", "pinned_artifacts", "object_deletions", "cache_event_hours", "maintenance_leases", "gc_runs",
          "retired_counts"}


@pytest.fixture(params=database_kinds())
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of its own (not the one the running stack uses), dropped afterwards."""
    with empty_database_of(request.param, tmp_path, "migrations") as url:
        yield url


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
        "INSERT INTO jobs (id, key, namespace, manifest, queue, state, attempts, max_attempts, cancel_requested, "
        "created_at) VALUES (:id, :key, 'default', '{}', 'q', :state, 0, 1, false, CURRENT_TIMESTAMP)"
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


def test_0007_keeps_old_tokens_everywhere_and_backfills_namespaces_and_origins(empty_database: str) -> None:
    """Rows written before namespaces were checked: old tokens keep acting in every namespace,
    jobs and events get their key's namespace, artifacts their origin and token."""
    migrate.upgrade(empty_database, "0006")
    engine = create_engine(normalise_url(empty_database))
    manifest = '{"namespace": "team-a"}'
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO api_tokens (name, token_sha256, scope, created_at) "
                              "VALUES ('ci', 'h1', 'write', CURRENT_TIMESTAMP)"))
            conn.execute(text(
                "INSERT INTO jobs (id, key, manifest, queue, state, attempts, max_attempts, cancel_requested, "
                "requested_by, created_at) VALUES ('j1', 'k1', :m, 'q', 'succeeded', 1, 1, false, 'ci', "
                "CURRENT_TIMESTAMP)"), {"m": manifest})
            for key, job, annotations in [("k1", "j1", None), ("k2", None, '{"published_by": "laptop"}')]:
                conn.execute(text(
                    "INSERT INTO artifacts (key, manifest, namespace, model_digest, target, compiler_name, "
                    "compiler_version, runtime_version, compile_seconds, job_id, created_at, annotations) VALUES "
                    "(:key, :m, 'team-a', 'sha256:x', 'trn1', 'neuronx-cc', '2', '2', 1.0, :job, CURRENT_TIMESTAMP, "
                    ":a)"), {"key": key, "m": manifest, "job": job, "a": annotations})
            for key in ("k1", "k2", "k-unknown"):
                conn.execute(text(
                    "INSERT INTO cache_events (at, kind, outcome, key, target, compiler_name, compiler_version, "
                    "saved_seconds) VALUES (CURRENT_TIMESTAMP, 'lookup', 'miss', :key, 'trn1', 'neuronx-cc', '2', 0)"),
                    {"key": key})
        migrate.upgrade(empty_database)
        with engine.connect() as conn:
            namespaces = conn.execute(text("SELECT namespaces FROM api_tokens")).scalar_one()
            assert (namespaces if isinstance(namespaces, list) else json.loads(namespaces)) == ["*"]
            assert conn.execute(text("SELECT namespace FROM jobs")).scalar_one() == "team-a"
            origins = conn.execute(text("SELECT key, origin, origin_token FROM artifacts ORDER BY key")).all()
            assert [tuple(r) for r in origins] == [("k1", "farm", "ci"), ("k2", "pushed", "laptop")]
            events = dict(conn.execute(text("SELECT key, namespace FROM cache_events")).all())
            assert events == {"k1": "team-a", "k2": "team-a", "k-unknown": None}
        migrate.downgrade(empty_database, "0006")
        migrate.upgrade(empty_database)
    finally:
        engine.dispose()


def test_0008_counts_each_artifacts_hits_and_downloads_from_the_events(empty_database: str) -> None:
    migrate.upgrade(empty_database, "0007")
    engine = create_engine(normalise_url(empty_database))
    try:
        with engine.begin() as conn:
            for key, kind, outcome in [("k1", "lookup", "hit"), ("k1", "compile", "hit"), ("k1", "download", "hit"),
                                       ("k1", "lookup", "miss"), ("k2", "download", "hit"), ("k3", "lookup", "miss")]:
                conn.execute(text(
                    "INSERT INTO cache_events (at, kind, outcome, key, target, compiler_name, compiler_version, "
                    "saved_seconds) VALUES (CURRENT_TIMESTAMP, :kind, :outcome, :key, 'trn1', 'neuronx-cc', '2', 0)"),
                    {"key": key, "kind": kind, "outcome": outcome})
        migrate.upgrade(empty_database)
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT key, lookup_hits, downloads FROM artifact_usage ORDER BY key")).all()
        assert [tuple(r) for r in rows] == [("k1", 2, 1), ("k2", 0, 1)]
    finally:
        engine.dispose()


def test_0009_takes_each_artifacts_last_use_from_its_newest_hit(empty_database: str) -> None:
    migrate.upgrade(empty_database, "0008")
    engine = create_engine(normalise_url(empty_database))
    try:
        with engine.begin() as conn:
            for key, at, outcome in [("k1", "2026-11-01 10:00:00", "hit"), ("k1", "2026-11-03 09:30:00", "hit"),
                                     ("k1", "2026-11-05 08:00:00", "miss"), ("k2", "2026-11-02 12:00:00", "miss")]:
                conn.execute(text(
                    "INSERT INTO cache_events (at, kind, outcome, key, target, compiler_name, compiler_version, "
                    "saved_seconds) VALUES (:at, 'lookup', :outcome, :key, 'trn1', 'neuronx-cc', '2', 0)"),
                    {"key": key, "at": at, "outcome": outcome})
            for key in ("k1", "k2"):
                conn.execute(text("INSERT INTO artifact_usage (key, lookup_hits, downloads) VALUES (:key, 0, 0)"),
                             {"key": key})
        migrate.upgrade(empty_database)
        with engine.connect() as conn:
            used = dict(conn.execute(text("SELECT key, last_used_at FROM artifact_usage")).all())
        assert str(used["k1"]).startswith("2026-11-03 09:30:00") and used["k2"] is None
        migrate.downgrade(empty_database, "0008")
        migrate.upgrade(empty_database)
    finally:
        engine.dispose()
