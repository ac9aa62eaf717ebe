"""Fixtures of the in-process service tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.in_process import migrated_sqlite


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite database, where `neffcache-admin` finds it (NEFFCACHE_DATABASE_URL)."""
    url = migrated_sqlite(tmp_path)
    monkeypatch.setenv("NEFFCACHE_DATABASE_URL", url)
    return url
