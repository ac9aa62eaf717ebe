"""A database for in-process tests: SQLite in a folder of the test's, made by the migrations
exactly as a deployment's is (tables are never made any other way)."""

from __future__ import annotations

from pathlib import Path

from neffcache.db import migrate


def migrated_sqlite(folder: Path) -> str:
    """The URL of a new SQLite database in `folder`, migrated to head."""
    url = f"sqlite:///{folder}/neffcache.db"
    migrate.upgrade(url)
    return url
