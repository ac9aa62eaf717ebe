"""The databases the benchmarks measure against (`each_database`: the embedded SQLite and a
PostgreSQL database of their own, created and dropped on a given server) and `insert_history`,
bulk-inserted earlier cache events."""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit


def insert_history(db_url: str, spec: dict[str, Any], key: str, n: int) -> float:
    """n earlier cache events of the key (hits and misses of each kind, over the past n seconds),
    bulk-inserted into cache_events with SQL. Returns the seconds it took."""
    start = time.perf_counter()
    values = (key, spec.get("namespace", "default"), spec["target"], spec["compiler"]["name"],
              spec["compiler"]["version"])
    mod = "%" if db_url.startswith("sqlite:///") else "%%"  # psycopg's placeholders start with %
    kind = f"CASE i {mod} 3 WHEN 0 THEN 'lookup' WHEN 1 THEN 'compile' ELSE 'download' END"
    outcome = f"CASE WHEN i {mod} 10 = 0 THEN 'miss' ELSE 'hit' END"
    saved = f"CASE WHEN i {mod} 10 = 0 THEN 0.0 ELSE 600.0 END"
    columns = "at, kind, outcome, key, namespace, target, compiler_name, compiler_version, caller, saved_seconds"
    if db_url.startswith("sqlite:///"):
        con = sqlite3.connect(db_url[len("sqlite:///"):], timeout=60)
        try:
            with con:
                con.execute(
                    f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
                    f"INSERT INTO cache_events ({columns}) SELECT "
                    f"strftime('%Y-%m-%d %H:%M:%S', 'now', '-' || (i + 60) || ' seconds') || '.000000', "
                    f"{kind}, {outcome}, ?, ?, ?, ?, ?, 'bench-history', "
                    f"{saved} FROM n", (n, *values))
        finally:
            con.close()
    else:
        import psycopg

        with psycopg.connect(db_url, autocommit=False) as con:
            con.execute(
                f"INSERT INTO cache_events ({columns}) SELECT "
                f"now() - make_interval(secs => i + 60), {kind}, {outcome}, %s, %s, %s, %s, %s, 'bench-history', "
                f"{saved} FROM generate_series(1, %s) AS i", (*values, n))
    return time.perf_counter() - start


class PostgresDatabase:
    """A database of our own on the given server: created here, dropped at the end."""

    def __init__(self, server_url: str) -> None:
        import psycopg

        self.server_url = server_url
        self.name = f"neffcache_bench_{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{self.name}"')
        parts = urlsplit(server_url)
        self.url = urlunsplit((parts.scheme, parts.netloc, "/" + self.name, parts.query, ""))

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True) as con:
            try:
                con.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            except psycopg.errors.SyntaxError:  # before PostgreSQL 13
                con.execute(f'DROP DATABASE IF EXISTS "{self.name}"')


def each_database(work: Path, postgres: str | None, say: Callable[[str], None]) -> Iterator[tuple[str, str, Path]]:
    """(label, database URL, work folder) of each stack a benchmark measures: the embedded one
    (SQLite in `work`) and, given a PostgreSQL server's URL, one on a database of our own there,
    created when its turn comes and dropped once the caller is done with it, or failed."""
    yield "embedded", f"sqlite:///{work / 'embedded' / 'neffcache.db'}", work / "embedded"
    if postgres:
        database = PostgresDatabase(postgres)
        say(f"\ncreated database {database.name} on {urlsplit(postgres).hostname}")
        try:
            yield "postgres", database.url, work / "postgres"
        finally:
            database.drop()
            say(f"dropped database {database.name}")

