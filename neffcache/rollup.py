"""Cache events rolled up into hourly counts, and the history readers sum (raw plus rolled up).

One cache_events row per lookup, compile request and download grows without bound. Past
NEFFCACHE_EVENT_RETENTION_S (the GC calls `roll_up_events` with `before = now - retention`)
they are moved into cache_event_hours: one row per hour and per everything a reader groups or
filters by (kind, outcome, key, namespace, target, compiler name and version, caller), with
the events' count and saved seconds summed; '' stands for a caller or namespace the event did not
record (NULL). What /v1/stats and /v1/hits answer is then the same as before, and costs what the
number of buckets costs, not the number of events.

Each batch is one transaction: the INSERT ... SELECT ... GROUP BY that adds the batch's counts to
its buckets (an upsert: a bucket met again, by a later batch or a later roll-up, is added to) and
the DELETE of the same rows commit together or not at all, so a roll-up that dies half way has
moved whole batches only, and the next one carries on without counting anything twice. The batch
is exactly the rows both statements read:
- on Postgres, the oldest `batch_size` ids, locked (FOR UPDATE SKIP LOCKED): a concurrent roll-up
  takes other rows, and the event writer's new rows are newer than `before` anyway;
- on SQLite, the rows older than `before` between the batch's first and last id: the session's
  BEGIN IMMEDIATE holds the write lock from the first read, so nothing changes between the
  statements.
Buckets are written in their order, so two roll-ups at once lock the buckets they share in the
same order (one waits for the other instead of deadlocking).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    and_,
    any_,
    bindparam,
    delete,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql import Subquery

from neffcache.db.models import CacheEvent, CacheEventHour
from neffcache.db.session import Database

# What a bucket is, besides its hour: cache_event_hours' unique constraint.
BUCKET_COLUMNS = ("kind", "outcome", "key", "namespace", "target", "compiler_name", "compiler_version", "caller")
LOOKUP_KINDS = ("lookup", "compile")  # what `lookup_hits` counts (as /v1/stats does)
# Literals written into the SQL, not bound: Postgres takes a GROUP BY expression as the select's
# only when the two are the same text, and two bound parameters are never the same.
_UTC: ColumnElement[str] = literal_column("'UTC'")
_NOT_RECORDED: ColumnElement[str] = literal_column("''")


def hour_of(dialect: str, at: Any) -> ColumnElement[Any]:
    """`at` truncated to its hour, in UTC, as the column stores it."""
    if dialect == "postgresql":
        # date_trunc truncates in the session's time zone: truncate the UTC wall clock instead.
        return func.timezone(_UTC, func.date_trunc(literal_column("'hour'"), func.timezone(_UTC, at)))
    # SQLite keeps a UTC datetime as its text, 'YYYY-MM-DD HH:MM:SS.ffffff': the same, to the hour.
    return func.strftime(literal_column("'%Y-%m-%d %H:00:00.000000'"), at)


def roll_up_events(db: Database, before: datetime, batch_size: int = 10_000) -> int:
    """Move every cache event older than `before` into its hour's bucket, `batch_size` events per
    transaction; returns how many events it moved."""
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} (at least 1)")
    moved = 0
    while True:
        with db.session() as session:
            batch = _roll_up_batch(session, before, batch_size)
        moved += batch
        if batch < batch_size:
            return moved


def _roll_up_batch(session: Session, before: datetime, batch_size: int) -> int:
    dialect = session.get_bind().dialect.name
    batch = _batch(session, dialect, before, batch_size)
    if batch is None:
        return 0
    hour = hour_of(dialect, CacheEvent.at)
    grouped = [func.coalesce(c, _NOT_RECORDED) if c.nullable else c
               for c in (CacheEvent.__table__.c[name] for name in BUCKET_COLUMNS)]
    counts = (select(hour, *grouped, func.count(), func.coalesce(func.sum(CacheEvent.saved_seconds), 0.0))
              .where(batch).group_by(hour, *grouped).order_by(hour, *grouped))
    insert = (postgresql if dialect == "postgresql" else sqlite).insert(CacheEventHour)
    upsert = insert.from_select(["hour", *BUCKET_COLUMNS, "count", "saved_seconds"], counts)
    session.execute(upsert.on_conflict_do_update(
        index_elements=["hour", *BUCKET_COLUMNS],
        set_={"count": CacheEventHour.count + upsert.excluded["count"],
              "saved_seconds": CacheEventHour.saved_seconds + upsert.excluded["saved_seconds"]}))
    deleted: int = session.execute(delete(CacheEvent).where(batch)).rowcount  # type: ignore[attr-defined]
    return deleted


def _batch(session: Session, dialect: str, before: datetime, batch_size: int) -> ColumnElement[bool] | None:
    """Which rows this batch moves (see the module's docstring), or None when none is left."""
    oldest = select(CacheEvent.id).where(CacheEvent.at < before).order_by(CacheEvent.id).limit(batch_size)
    if dialect == "postgresql":
        ids = list(session.scalars(oldest.with_for_update(skip_locked=True)))
        if not ids:
            return None
        return CacheEvent.id == any_(bindparam("batch_ids", ids, type_=postgresql.ARRAY(Integer)))
    batch = oldest.subquery()
    first, last = session.execute(select(func.min(batch.c.id), func.max(batch.c.id))).one()
    # Both ends of the id range: SQLite then reads the batch by primary key, not every older row
    # by the index on `at` (which made each batch cost what the whole backlog costs).
    return None if last is None else and_(CacheEvent.id.between(first, last), CacheEvent.at < before)


def counted_events() -> Subquery:
    """Raw events (each counts 1) and roll-ups (each its `count`) as one table, with the columns
    of both (`at`: a roll-up's hour; `namespace`: NULL in raw events, '' in roll-ups, which a
    namespace filter leaves out alike): sum `count` and `saved_seconds` over it."""
    raw = select(*(CacheEvent.__table__.c[name] for name in BUCKET_COLUMNS), CacheEvent.at.label("at"),
                 literal_column("1", BigInteger).label("count"), CacheEvent.saved_seconds)
    rolled = select(*(CacheEventHour.__table__.c[name] for name in BUCKET_COLUMNS), CacheEventHour.hour.label("at"),
                    CacheEventHour.count, CacheEventHour.saved_seconds)
    return union_all(raw, rolled).subquery("counted_events")


def hits_by_toolchain(session: Session, since: datetime,
                      namespaces: Sequence[str] | None = None) -> dict[tuple[str, str], int]:
    """Lookup hits (lookups and compile requests a published artifact answered) per (compiler
    name, compiler version) since `since`, from raw and rolled-up events alike; rolled-up ones
    count by whole hours (an hour that starts before `since` is left out). `namespaces`: only
    those (a token's `Grant.visible()`); None: every one."""
    events = counted_events()
    query = (select(events.c.compiler_name, events.c.compiler_version, func.sum(events.c["count"]))
             .where(events.c.kind.in_(LOOKUP_KINDS), events.c.outcome == "hit", events.c.at >= since)
             .group_by(events.c.compiler_name, events.c.compiler_version))
    if namespaces is not None:
        query = query.where(events.c.namespace.in_(namespaces))
    return {(name, version): int(hits) for name, version, hits in session.execute(query)}
