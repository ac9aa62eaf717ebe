"""Databases of a test's own (not the session's): SQLite in the test's folder, and a Postgres
database on the server NEFFCACHE_TEST_DATABASE_URL names, created empty and dropped after."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from neffcache.db.session import normalise_url


def database_kinds() -> list[str]:
    """SQLite always; Postgres too when the tests are given a server."""
    kinds = ["sqlite"]
    if os.environ.get("NEFFCACHE_TEST_DATABASE_URL", "").startswith("postgres"):
        kinds.append("postgres")
    return kinds


@contextmanager
def empty_database(kind: str, folder: Path, label: str = "test") -> Iterator[str]:
    """The URL of an empty database of `kind` ("sqlite" or "postgres"), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'{label}.db'}"
        return
    server = normalise_url(os.environ["NEFFCACHE_TEST_DATABASE_URL"])
    name = f"neffcache_{label}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
