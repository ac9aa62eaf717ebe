"""Cache events (lookups, compile requests, downloads) recorded off the request path, in batches.

A hit is a read: nothing about it needs a synchronous write. A request only appends its event
to this process's pending list; a thread flushes the list every `event_flush_s` in one
transaction: one multi-row INSERT into cache_events, and one upsert per key into
artifact_usage, the running counts an artifact's view shows and its last use, the GC's LRU
order (so a view costs one primary-key read however long the history, instead of a COUNT over
every event of the key).

What this trades, on purpose:
- A crash (SIGKILL, power) loses the events of at most one flush interval; a clean stop
  flushes. Events are statistics, never the cache's state: nothing is lost that a lookup needs.
- Another API process sees this one's events once they are flushed (`event_flush_s` later at
  most); this process counts its own pending ones in every view (`pending_usage`), and
  `/v1/stats` and `/v1/hits` flush first, so a single process reads its own writes.
- A flush that fails (the database down) keeps its events for the next one, up to
  `MAX_PENDING`; beyond that the oldest are dropped, logged and counted.
"""

from __future__ import annotations

import logging
import operator
import threading
from collections import Counter as Tally
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import case, or_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from neffcache.db.models import ArtifactUsage, CacheEvent, utcnow

if TYPE_CHECKING:
    from neffcache.db.session import Database
    from neffcache.service.metrics import ServiceMetrics

log = logging.getLogger(__name__)
# Events kept while flushes fail (a database outage); beyond this the oldest are dropped.
MAX_PENDING = 100_000


@dataclass(frozen=True)
class Event:
    """One cache_events row, as recorded by a request."""

    kind: str  # lookup | compile | download
    outcome: str  # hit | miss
    key: str
    namespace: str
    target: str
    compiler_name: str
    compiler_version: str
    caller: str | None
    saved_seconds: float
    at: datetime

    @property
    def usage(self) -> tuple[int, int]:
        """What it adds to its key's (lookup_hits, downloads)."""
        if self.outcome != "hit":
            return 0, 0
        return (0, 1) if self.kind == "download" else (1, 0)


@dataclass(frozen=True)
class UsageSnapshot:
    """An artifact's counts as written (plus this process's pending ones) when read, and this
    process's own running total then: what it shows later is that plus what this process
    recorded since (`now`)."""

    lookup_hits: int
    downloads: int
    recorded_then: tuple[int, int]

    def now(self, recorded: tuple[int, int]) -> tuple[int, int]:
        return (self.lookup_hits + recorded[0] - self.recorded_then[0],
                self.downloads + recorded[1] - self.recorded_then[1])


EVENT_COLUMNS = tuple(f.name for f in fields(Event))
_event_values = operator.attrgetter(*EVENT_COLUMNS)
# The driver's placeholder, by DB-API paramstyle (sqlite3: qmark; psycopg: format or pyformat).
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _insert_events(session: Session, batch: list[Event]) -> None:
    """One INSERT of the whole batch through the driver's executemany, each value converted by
    its column's type as the ORM would: the ORM's own bulk insert spent about 35 µs of CPU per
    event building statements, which, every flush, held the interpreter from the requests."""
    connection = session.connection()
    dialect = connection.dialect
    table = CacheEvent.__table__
    convert = [table.c[name].type.bind_processor(dialect) for name in EVENT_COLUMNS]
    rows = [tuple(c(v) if c else v for c, v in zip(convert, _event_values(e), strict=True)) for e in batch]
    mark = _PLACEHOLDERS[dialect.paramstyle]
    statement = (f"INSERT INTO {CacheEvent.__tablename__} ({', '.join(EVENT_COLUMNS)}) "
                 f"VALUES ({', '.join(mark for _ in EVENT_COLUMNS)})")
    connection.exec_driver_sql(statement, rows)


class EventRecorder:
    def __init__(self, db: Database, metrics: ServiceMetrics, flush_interval_s: float) -> None:
        self.db = db
        self.metrics = metrics
        self.flush_interval_s = flush_interval_s
        self._pending: list[Event] = []
        self._pending_usage: dict[str, Tally[str]] = {}
        # Every event's usage this process recorded, by key, never reset (UsageSnapshot).
        self._recorded_usage: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()  # the pending list and counts
        self._flushing = threading.Lock()  # one flush at a time (the thread, or a route's)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, kind: str, outcome: str, manifest: dict[str, Any], key: str, caller: str | None,
               saved_seconds: float) -> None:
        event = Event(kind, outcome, key, manifest["namespace"], manifest["target"], manifest["compiler"]["name"],
                      manifest["compiler"]["version"], caller, saved_seconds, utcnow())
        lookups, downloads = event.usage
        with self._lock:
            self._pending.append(event)
            if lookups or downloads:
                counts = self._pending_usage.setdefault(key, Tally())
                counts["lookup_hits"] += lookups
                counts["downloads"] += downloads
                total = self._recorded_usage.get(key, (0, 0))
                self._recorded_usage[key] = (total[0] + lookups, total[1] + downloads)

    def pending_usage(self, key: str) -> tuple[int, int]:
        """(lookup_hits, downloads) of `key` recorded here and not flushed yet."""
        with self._lock:
            counts = self._pending_usage.get(key)
            return (counts["lookup_hits"], counts["downloads"]) if counts else (0, 0)

    def recorded_usage(self, key: str) -> tuple[int, int]:
        """(lookup_hits, downloads) of `key` this process recorded since it started."""
        with self._lock:
            return self._recorded_usage.get(key, (0, 0))

    def usage_snapshot(self, key: str, written: Callable[[], tuple[int, int]]) -> UsageSnapshot:
        """`written()` (the counts in the database) read while no flush runs, with this process's
        pending and recorded counts of the same moment: nothing counted twice or missed."""
        with self._flushing:
            lookups, downloads = written()
            with self._lock:
                counts = self._pending_usage.get(key)
                pending = (counts["lookup_hits"], counts["downloads"]) if counts else (0, 0)
                recorded = self._recorded_usage.get(key, (0, 0))
        return UsageSnapshot(lookups + pending[0], downloads + pending[1], recorded)

    def flush(self) -> int:
        """Write the pending events, and their counts, in one transaction; returns how many."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
                usage, self._pending_usage = self._pending_usage, {}
            if not batch:
                return 0
            try:
                self._write(batch, usage)
            except Exception as exc:  # noqa: BLE001 - the database down: keep them for the next flush
                self._put_back(batch, usage)
                log.warning("cache events: flush of %d failed, kept for the next one: %s", len(batch), exc)
                self.metrics.event_flush_failed()
                return 0
            self.metrics.events_flushed(len(batch), (utcnow() - batch[0].at).total_seconds())
            return len(batch)

    def _write(self, batch: list[Event], usage: dict[str, Tally[str]]) -> None:
        with self.db.session() as session:
            _insert_events(session, batch)
            dialect = session.get_bind().dialect.name
            upsert = (postgresql if dialect == "postgresql" else sqlite).insert(ArtifactUsage)
            # Each key's last use: its newest hit or download in the batch.
            last_use: dict[str, datetime] = {}
            for event in batch:
                if event.outcome == "hit" and (event.key not in last_use or event.at > last_use[event.key]):
                    last_use[event.key] = event.at
            for key, counts in sorted(usage.items()):  # sorted: concurrent flushes lock rows in one order
                hits, downloads, used = counts["lookup_hits"], counts["downloads"], last_use.get(key)
                # The last use only moves forward (another process may have flushed a newer one).
                newest = ArtifactUsage.last_used_at if used is None else case(
                    (or_(ArtifactUsage.last_used_at.is_(None), ArtifactUsage.last_used_at < used), used),
                    else_=ArtifactUsage.last_used_at)
                session.execute(upsert.values(key=key, lookup_hits=hits, downloads=downloads, last_used_at=used)
                                .on_conflict_do_update(
                    index_elements=[ArtifactUsage.key],
                    set_={"lookup_hits": ArtifactUsage.lookup_hits + hits,
                          "downloads": ArtifactUsage.downloads + downloads,
                          "last_used_at": newest}))

    def _put_back(self, batch: list[Event], usage: dict[str, Tally[str]]) -> None:
        with self._lock:
            self._pending[:0] = batch
            for key, counts in usage.items():
                self._pending_usage.setdefault(key, Tally()).update(counts)
            dropped = len(self._pending) - MAX_PENDING
            if dropped > 0:
                gone, self._pending = self._pending[:dropped], self._pending[dropped:]
                for event in gone:
                    lookups, downloads = event.usage
                    left = self._pending_usage.get(event.key)
                    if left is not None:
                        left["lookup_hits"] -= lookups
                        left["downloads"] -= downloads
                log.error("cache events: %d dropped, the database has not taken any for a while", dropped)
                self.metrics.events_dropped(dropped)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="neffcache-events", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            self.flush()

    def stop(self) -> None:
        """Stop the thread and flush what is pending (a clean stop loses nothing)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.flush()
