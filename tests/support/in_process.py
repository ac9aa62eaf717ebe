"""The service in process, for tests that need no running stack: a database made by the
migrations exactly as a deployment's is (tables are never made any other way), and settings for
an app on it with the folder object store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete

from neffcache.db import migrate
from neffcache.db.models import Job, Worker
from neffcache.db.session import Database
from neffcache.settings import Settings

if TYPE_CHECKING:
    import pytest
    from fastapi.testclient import TestClient

# Nothing answers here: an app that never enqueues needs no Redis, and says so if it tries.
NO_REDIS = "redis://127.0.0.1:1/0"


def migrated_sqlite(folder: Path) -> str:
    """The URL of a new SQLite database in `folder`, migrated to head."""
    url = f"sqlite:///{folder}/neffcache.db"
    migrate.upgrade(url)
    return url


def service_settings(root: Path, *, database_url: str | None = None, **overrides: Any) -> Settings:
    """Settings for an app in process: `database_url` (else a new migrated SQLite in `root`), the
    folder store in root/objects, NO_REDIS unless a test gives a Redis, nothing kept in memory
    for the hit path (hot_cache_s 0: a test reads its own changes at once); `overrides` win."""
    return Settings(**{
        "database_url": database_url or migrated_sqlite(root),
        "storage_url": f"file://{root / 'objects'}",
        "redis_url": NO_REDIS,
        "hot_cache_s": 0.0,
        **overrides,
    })


@contextmanager
def app_on_redis(root: Path, redis_url: str, queue_prefix: str, **overrides: Any) -> Iterator[TestClient]:
    """The app in process (auth off) on the session's Redis, its queues under `queue_prefix`;
    afterwards every Redis key it made is deleted, and the test fails if any is left."""
    from fastapi.testclient import TestClient

    from neffcache.queue import connect_redis
    from neffcache.service.app import create_app
    from tests.support.rq_keys import delete_run_keys, run_leftovers

    settings = service_settings(root, **{"auth_required": False, "redis_url": redis_url,
                                         "queue_prefix": queue_prefix, **overrides})
    with TestClient(create_app(settings)) as client:
        yield client
    redis = connect_redis(redis_url)
    try:
        delete_run_keys(redis, queue_prefix)
        assert run_leftovers(redis, queue_prefix) == ([], [])
    finally:
        redis.close()


def read_job(db: Database, job_id: str) -> Job:
    """The job's row as the database holds it now, detached from its session."""
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def forget_workers(database_url: str, *pids: int) -> None:
    """Take workers' registrations out (workers a test started and stopped or killed), so later
    tests see only the session's toolchains."""
    db = Database(database_url)
    try:
        with db.session() as session:
            session.execute(delete(Worker).where(Worker.pid.in_(pids)))
    finally:
        db.dispose()


def run_admin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, str]:
    """`neffcache-admin ARGS` in process: (exit code, stdout, stderr)."""
    from neffcache.service import admin

    monkeypatch.setattr("sys.argv", ["neffcache-admin", *args])
    code = 0
    try:
        admin.main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
