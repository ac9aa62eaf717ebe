"""Databases of a test's own (not the session's, which the running stack uses): SQLite in a
folder, and, when NEFFCACHE_TEST_DATABASE_URL names a Postgres server, a database created on it
and dropped afterwards. `DATABASE_KINDS` is what a test parametrizes over to run on each."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text

from neffcache.db.session import normalise_url


def _kinds() -> list[str]:
    kinds = ["sqlite"]
    if os.environ.get("NEFFCACHE_TEST_DATABASE_URL", "").startswith("postgres"):
        kinds.append("postgres")
    return kinds


DATABASE_KINDS = _kinds()


@contextmanager
def own_database(kind: str, folder: Path, name: str) -> Iterator[str]:
    """The URL of a new, empty database of `kind` ("sqlite": in `folder`; "postgres": on the
    test server, `neffcache_<name>_<random>`, dropped when the block ends)."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / f'{name}.db'}"
        return
    server = normalise_url(os.environ["NEFFCACHE_TEST_DATABASE_URL"])
    database = f"neffcache_{name}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{database}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()
