"""service/events.py: cache events recorded off the request path and written in batches, with
each artifact's running counts (artifact_usage), against SQLite made by the migrations."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select

from neffcache.db.models import ArtifactUsage, CacheEvent
from neffcache.db.session import Database
from neffcache.service import events
from neffcache.service.events import EventRecorder
from neffcache.service.metrics import ServiceMetrics
from neffcache.settings import Settings
from tests.support.api import SAMPLE_MANIFEST
from tests.support.in_process import migrated_sqlite

KEY_A, KEY_B = "a" * 64, "b" * 64


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path))
    yield database
    database.dispose()


@pytest.fixture
def recorder(db: Database) -> EventRecorder:
    return EventRecorder(db, ServiceMetrics(db, Settings(database_url=db.url)), flush_interval_s=60)


def record(recorder: EventRecorder, kind: str, outcome: str = "hit", key: str = KEY_A) -> None:
    recorder.record(kind, outcome, SAMPLE_MANIFEST, key, "ci", 12.5 if outcome == "hit" else 0.0)


def usage(db: Database, key: str) -> tuple[int, int] | None:
    with db.session() as session:
        row = session.get(ArtifactUsage, key)
        return (row.lookup_hits, row.downloads) if row is not None else None


def event_count(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(CacheEvent)) or 0


def metric(recorder: EventRecorder, name: str) -> float:
    value = recorder.metrics.registry.get_sample_value(name)
    return value or 0.0


def test_events_wait_in_memory_and_are_written_in_one_statement_per_table(
        db: Database, recorder: EventRecorder) -> None:
    for kind in ("lookup", "compile", "download", "download"):
        record(recorder, kind)
    record(recorder, "lookup", outcome="miss", key=KEY_B)
    assert event_count(db) == 0 and usage(db, KEY_A) is None, "nothing is written on the request path"
    assert recorder.pending_usage(KEY_A) == (2, 2) and recorder.pending_usage(KEY_B) == (0, 0)

    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(db.engine, "before_cursor_execute", listener)
    try:
        assert recorder.flush() == 5
    finally:
        event.remove(db.engine, "before_cursor_execute", listener)
    inserts = [s for s in statements if s.startswith("INSERT INTO cache_events")]
    assert len(inserts) == 1, statements  # one multi-row INSERT, not one per event
    assert event_count(db) == 5 and usage(db, KEY_A) == (2, 2) and usage(db, KEY_B) is None
    assert recorder.pending_usage(KEY_A) == (0, 0) and recorder.flush() == 0
    assert metric(recorder, "neffcache_event_batch_size_sum") == 5

    record(recorder, "compile")
    record(recorder, "download")
    recorder.flush()
    assert usage(db, KEY_A) == (3, 3), "counts add up across flushes"


def test_a_flush_that_fails_keeps_its_events_for_the_next(db: Database, recorder: EventRecorder,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    record(recorder, "lookup")
    real_write = recorder._write

    def database_down(*args: Any) -> None:
        raise RuntimeError("connection refused")

    monkeypatch.setattr(recorder, "_write", database_down)
    assert recorder.flush() == 0
    assert recorder.pending_usage(KEY_A) == (1, 0) and metric(recorder, "neffcache_event_flush_failures_total") == 1
    record(recorder, "download")
    monkeypatch.setattr(recorder, "_write", real_write)
    assert recorder.flush() == 2 and usage(db, KEY_A) == (1, 1)


def test_beyond_the_limit_the_oldest_pending_events_are_dropped_and_counted(
        db: Database, recorder: EventRecorder, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events, "MAX_PENDING", 3)
    monkeypatch.setattr(recorder, "_write", lambda *args: (_ for _ in ()).throw(RuntimeError("down")))
    for kind in ("download", "lookup", "lookup", "lookup", "lookup"):
        record(recorder, kind)
    recorder.flush()
    assert recorder.pending_usage(KEY_A) == (3, 0), "the oldest two (a download, a lookup) were dropped"
    assert metric(recorder, "neffcache_events_dropped_total") == 2


def test_the_thread_flushes_on_its_interval_and_stop_flushes_the_rest(db: Database) -> None:
    recorder = EventRecorder(db, ServiceMetrics(db, Settings(database_url=db.url)), flush_interval_s=0.05)
    recorder.start()
    try:
        record(recorder, "lookup")
        flushed = threading.Event()
        for _ in range(100):
            if event_count(db) == 1:
                flushed.set()
                break
            flushed.wait(0.05)
        assert flushed.is_set(), "the thread wrote the event"
    finally:
        recorder.stop()
    record(recorder, "download")
    recorder.stop()  # stopped: a last flush all the same
    assert usage(db, KEY_A) == (1, 1)


def test_concurrent_records_and_flushes_lose_nothing(db: Database, recorder: EventRecorder) -> None:
    def hits() -> None:
        for _ in range(200):
            record(recorder, "lookup")

    def flushes() -> None:
        for _ in range(20):
            recorder.flush()

    threads = [threading.Thread(target=hits) for _ in range(4)] + [threading.Thread(target=flushes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorder.flush()
    assert usage(db, KEY_A) == (800, 0) and event_count(db) == 800


def last_used(db: Database, key: str) -> Any:
    with db.session() as session:
        return session.scalar(select(ArtifactUsage.last_used_at).where(ArtifactUsage.key == key))


def test_each_flush_moves_an_artifacts_last_use_forward_never_back(db: Database, recorder: EventRecorder) -> None:
    """The GC's LRU order, written with the counts: no write on the request path."""
    record(recorder, "lookup", outcome="miss")
    recorder.flush()
    assert last_used(db, KEY_A) is None  # a miss is not a use

    record(recorder, "lookup")
    first = recorder._pending[-1].at
    record(recorder, "download")
    newest = recorder._pending[-1].at
    assert last_used(db, KEY_A) is None
    recorder.flush()
    assert last_used(db, KEY_A) == newest >= first

    # Another process flushing an older hit later does not move it back.
    other = EventRecorder(db, recorder.metrics, flush_interval_s=60)
    record(other, "lookup")
    late = other._pending[-1]
    other._pending[-1] = events.Event(**{**late.__dict__, "at": newest.replace(year=newest.year - 1)})
    other.flush()
    assert last_used(db, KEY_A) == newest
    assert usage(db, KEY_A) == (2, 1)
