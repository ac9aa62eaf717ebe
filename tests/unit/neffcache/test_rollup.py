"""neffcache/rollup.py: cache events older than a cut-off moved into hourly buckets, on SQLite and
(when NEFFCACHE_TEST_DATABASE_URL names a server) Postgres, each a database of this module's own
made by the migrations. The Postgres sessions run in Asia/Kolkata (UTC+05:30): an hour truncated
in the session's time zone instead of UTC would land on the half hour and fail every bucket here.

The expected buckets come from `expected_buckets`, the roll-up's rule written out in Python: one
bucket per UTC hour and every grouping column, NULL caller or namespace as ''."""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, func, select

from neffcache.db import migrate
from neffcache.db.models import CacheEvent, CacheEventHour
from neffcache.db.session import Database
from neffcache.rollup import BUCKET_COLUMNS, hits_by_toolchain, roll_up_events
from tests.support.databases import database_kinds, empty_database

T0 = datetime(2025, 3, 9, 10, 5, 0, tzinfo=UTC)
CUT_OFF = datetime(2025, 3, 20, tzinfo=UTC)  # every event below is older, unless a test says otherwise
# A session time zone with a half-hour offset (Postgres only; SQLite has none).
SESSION_TIME_ZONE = "?options=-c%20TimeZone%3DAsia/Kolkata"
BASE = {"kind": "lookup", "outcome": "hit", "key": "a" * 64, "namespace": "team-a", "target": "trn1",
        "compiler_name": "neuronx-cc", "compiler_version": "2.21.18209.0", "caller": "ci", "saved_seconds": 10.0}
OTHER = {"kind": "download", "outcome": "miss", "key": "b" * 64, "namespace": "team-b", "target": "inf2",
         "compiler_name": "inductor", "compiler_version": "2.5.1", "caller": "release-bot"}


@pytest.fixture(scope="module", params=database_kinds())
def migrated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    with empty_database(request.param, tmp_path_factory.mktemp("rollup"), "rollup") as url:
        migrate.upgrade(url)
        database = Database(url + (SESSION_TIME_ZONE if request.param == "postgres" else ""))
        yield database
        database.dispose()


@pytest.fixture
def db(migrated: Database) -> Database:
    """The module's database with no event and no bucket."""
    with migrated.session() as session:
        session.execute(delete(CacheEvent))
        session.execute(delete(CacheEventHour))
    return migrated


def ev(at: datetime, **overrides: Any) -> dict[str, Any]:
    return {**BASE, "at": at, **overrides}


def insert(db: Database, events: list[dict[str, Any]]) -> None:
    with db.session() as session:
        session.add_all(CacheEvent(**e) for e in events)


def expected_buckets(events: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[int, float]]:
    counts: Counter[tuple[Any, ...]] = Counter()
    saved: Counter[tuple[Any, ...]] = Counter()
    for e in events:
        bucket = (e["at"].astimezone(UTC).replace(minute=0, second=0, microsecond=0),
                  *("" if e[c] is None else e[c] for c in BUCKET_COLUMNS))
        counts[bucket] += 1
        saved[bucket] += e["saved_seconds"]
    return {b: (n, saved[b]) for b, n in counts.items()}


def buckets(db: Database) -> dict[tuple[Any, ...], tuple[int, float]]:
    with db.session() as session:
        rows = session.scalars(select(CacheEventHour)).all()
    return {(r.hour, *(getattr(r, c) for c in BUCKET_COLUMNS)): (r.count, r.saved_seconds) for r in rows}


def raw_count(db: Database) -> int:
    with db.session() as session:
        return session.scalar(select(func.count()).select_from(CacheEvent)) or 0


SECOND_EVENT = [
    pytest.param(ev(T0 + timedelta(minutes=54, seconds=59, microseconds=999_999)), 1, id="same-hour"),
    pytest.param(ev(T0 + timedelta(minutes=55)), 2, id="next-hour"),
    pytest.param(ev(T0 - timedelta(days=1)), 2, id="a-day-earlier"),
    *(pytest.param(ev(T0, **{column: OTHER[column]}), 2, id=f"other-{column}") for column in OTHER),
    pytest.param(ev(T0, saved_seconds=0.5), 1, id="other-saved-seconds-is-summed"),
    pytest.param(ev(T0, caller=None), 2, id="caller-null"),
    pytest.param(ev(T0, namespace=None), 2, id="namespace-null"),
]


@pytest.mark.parametrize("second, n_buckets", SECOND_EVENT)
def test_events_are_counted_per_hour_and_every_grouping_column(db: Database, second: dict[str, Any],
                                                               n_buckets: int) -> None:
    events = [ev(T0), second]
    insert(db, events)
    assert roll_up_events(db, CUT_OFF) == 2
    got = buckets(db)
    assert got == expected_buckets(events) and len(got) == n_buckets
    assert raw_count(db) == 0
    assert all(hour.tzinfo is not None and hour.minute == 0 for hour, *_ in got)


def test_a_null_caller_or_namespace_is_one_bucket_with_the_empty_string(db: Database) -> None:
    events = [ev(T0, caller=None, namespace=None), ev(T0 + timedelta(minutes=1), caller=None, namespace=None)]
    insert(db, events)
    roll_up_events(db, CUT_OFF)
    (bucket, counts), = buckets(db).items()
    assert bucket[BUCKET_COLUMNS.index("caller") + 1] == bucket[BUCKET_COLUMNS.index("namespace") + 1] == ""
    assert counts == (2, 20.0)


def test_only_events_older_than_the_cut_off_are_moved(db: Database) -> None:
    old, new = ev(CUT_OFF - timedelta(microseconds=1)), ev(CUT_OFF)
    insert(db, [old, new])
    assert roll_up_events(db, CUT_OFF) == 1
    assert buckets(db) == expected_buckets([old]) and raw_count(db) == 1
    assert roll_up_events(db, CUT_OFF) == 0  # nothing left to move: nothing changes
    assert buckets(db) == expected_buckets([old])


def test_a_later_roll_up_adds_to_the_buckets_it_meets(db: Database) -> None:
    first = [ev(T0), ev(T0 + timedelta(minutes=1))]
    insert(db, first)
    roll_up_events(db, CUT_OFF)
    late = [ev(T0 + timedelta(minutes=2)), ev(T0, kind="compile")]  # written late, with their own times
    insert(db, late)
    assert roll_up_events(db, CUT_OFF) == 2
    assert buckets(db) == expected_buckets(first + late)


def spread(n: int) -> list[dict[str, Any]]:
    """n events over a few hours and callers: buckets that several batches meet."""
    return [ev(T0 + timedelta(minutes=7 * i), caller=f"pod-{i % 3}", outcome="miss" if i % 4 == 0 else "hit")
            for i in range(n)]


class Statements:
    """What the roll-up does, in order: 'insert' (into the buckets), 'delete' (of raw events) and
    'commit', from the engine's own events."""

    def __init__(self, db: Database) -> None:
        self.log: list[str] = []
        self.engine = db.engine
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(self.engine, "commit", self._commit)

    def _statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.startswith("INSERT INTO cache_event_hours"):
            self.log.append("insert")
        elif statement.startswith("DELETE FROM cache_events"):
            self.log.append("delete")

    def _commit(self, conn: Any) -> None:
        self.log.append("commit")

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "commit", self._commit)


@pytest.mark.parametrize("n, batch_size", [(10, 3), (9, 3), (5, 10_000), (0, 5), (1, 1)])
def test_each_batch_of_batch_size_events_is_one_transaction(db: Database, n: int, batch_size: int) -> None:
    events = spread(n)
    insert(db, events)
    statements = Statements(db)
    try:
        assert roll_up_events(db, CUT_OFF, batch_size=batch_size) == n
    finally:
        statements.close()
    full_batches = math.ceil(n / batch_size)
    # Each batch: its insert and delete, then its commit; a last batch of nothing commits nothing written.
    last = ["commit"] if n % batch_size == 0 else []
    assert statements.log == ["insert", "delete", "commit"] * full_batches + last
    assert buckets(db) == expected_buckets(events) and raw_count(db) == 0


def test_a_batch_that_fails_rolls_back_whole_and_the_next_roll_up_counts_nothing_twice(db: Database) -> None:
    events = spread(40)
    insert(db, events)
    deletes = 0

    def fail_the_second_delete(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        nonlocal deletes
        if statement.startswith("DELETE FROM cache_events"):
            deletes += 1
            if deletes == 2:  # after its batch's insert: a crash between the two statements
                raise RuntimeError("the roll-up died here")

    event.listen(db.engine, "before_cursor_execute", fail_the_second_delete)
    try:
        with pytest.raises(RuntimeError, match="died here"):
            roll_up_events(db, CUT_OFF, batch_size=15)
    finally:
        event.remove(db.engine, "before_cursor_execute", fail_the_second_delete)
    assert buckets(db) == expected_buckets(events[:15]) and raw_count(db) == 25  # the first batch only
    assert roll_up_events(db, CUT_OFF, batch_size=15) == 25
    assert buckets(db) == expected_buckets(events) and raw_count(db) == 0


def test_two_roll_ups_at_once_move_each_event_once(db: Database) -> None:
    events = spread(600)
    insert(db, events)
    moved: list[int] = []
    errors: list[BaseException] = []

    def roll_up() -> None:
        try:
            moved.append(roll_up_events(db, CUT_OFF, batch_size=25))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=roll_up) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sum(moved) == 600
    assert buckets(db) == expected_buckets(events) and raw_count(db) == 0


def test_events_written_during_a_roll_up_are_kept_raw(db: Database) -> None:
    old = spread(400)
    insert(db, old)
    new = [ev(CUT_OFF + timedelta(seconds=i)) for i in range(200)]
    writer = threading.Thread(target=lambda: [insert(db, new[i:i + 10]) for i in range(0, len(new), 10)])
    writer.start()
    assert roll_up_events(db, CUT_OFF, batch_size=20) == 400
    writer.join()
    assert buckets(db) == expected_buckets(old) and raw_count(db) == 200


def test_hits_by_toolchain_sums_raw_and_rolled_up_lookup_hits_since(db: Database) -> None:
    neuron, inductor = ("neuronx-cc", "2.21.18209.0"), ("inductor", "2.5.1")
    since = T0.replace(minute=0) + timedelta(hours=1)
    insert(db, [
        ev(since - timedelta(minutes=1)),  # before `since`
        ev(since), ev(since + timedelta(minutes=59), kind="compile"),  # rolled up, in the first hour counted
        ev(since, outcome="miss"), ev(since, kind="download"),  # neither is a lookup hit
        ev(since + timedelta(hours=2), compiler_name="inductor", compiler_version="2.5.1", namespace="team-b"),
    ])
    roll_up_events(db, since + timedelta(hours=1))  # the first three; the rest stay raw
    insert(db, [ev(CUT_OFF), ev(CUT_OFF, namespace=None)])  # raw
    with db.session() as session:
        assert hits_by_toolchain(session, since) == {neuron: 4, inductor: 1}
        assert hits_by_toolchain(session, since, namespaces=["team-a"]) == {neuron: 3}
        assert hits_by_toolchain(session, since - timedelta(hours=1)) == {neuron: 5, inductor: 1}
        assert hits_by_toolchain(session, CUT_OFF + timedelta(seconds=1)) == {}


def test_batch_size_must_be_positive(db: Database) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        roll_up_events(db, CUT_OFF, batch_size=0)

