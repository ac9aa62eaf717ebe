"""Engine and session: the one place a database transaction commits.

Nothing connects until a session is used. SQLite (the embedded default) gets WAL, a busy
timeout and BEGIN IMMEDIATE, so concurrent writers queue instead of failing with
"database is locked" when a read transaction upgrades to a write.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

# What a database that does not answer raises (SQLAlchemy wraps the driver's errors in these).
DATABASE_UNAVAILABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                        sqlalchemy.exc.DisconnectionError, sqlalchemy.exc.TimeoutError)


def normalise_url(url: str) -> str:
    """postgresql:// and postgres:// mean psycopg 3 here (the driver we ship)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


# Connections beyond the pool a process may open for a moment (closed when returned): for a
# thread that nests a second session, never as the steady state.
POOL_OVERFLOW = 8


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """`pool_size`: the connections kept open, one per thread that uses the database at once.

    Pre-ping stays on: a pooled connection that a database restart or failover closed is then
    replaced before use instead of failing one request each. It costs one round trip per
    checkout (bench/db_checkout.py: 0.06 to 0.1 ms, a fifth to a quarter of a one-query unit of work on
    loopback), which only cold paths pay: a warm hit checks out no connection at all."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=POOL_OVERFLOW)
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # let us issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # WAL's recommended setting: a commit survives the process (kill -9), and the last few may
        # be lost to a power cut or kernel crash, never corrupting the file; it spares an fsync
        # per commit (bench/submit_latency.py). Production runs Postgres.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


class Database:
    def __init__(self, url: str, pool_size: int = 5) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, pool_size)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits when the block ends normally, rolls back otherwise."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
