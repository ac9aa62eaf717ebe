"""Cache statistics: hit rate and compile time saved, in total and by target and compiler.

Two counts, named apart here and in the artifact view: `lookup_hits` (lookups and compile
requests answered by a published artifact) and `downloads` (artifact files fetched). `hits` is a
deprecated alias of `lookup_hits`, kept for clients that read it.

Both routes read the raw cache events and their hourly roll-ups (neffcache.rollup) alike, so an
answer is the same before and after a roll-up, and costs what the buckets cost past the
retention instead of what every event ever recorded costs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from neffcache.db.models import CacheEvent, CacheEventHour, Job
from neffcache.lifecycle import JobState
from neffcache.rollup import LOOKUP_KINDS, counted_events
from neffcache.service.auth import READ, Grant, grant
from neffcache.service.errors import error_responses
from neffcache.service.pagination import MAX_LIMIT
from neffcache.service.resolve import KEY_FILTER_PATTERN, KEY_LENGTH, PREFIX_ERRORS, key_prefix, resolve_key
from neffcache.service.routes.deps import context
from neffcache.service.views import iso
from neffcache.spec import Text

router = APIRouter(prefix="/v1", tags=["stats"], dependencies=[READ])


def _cache_counts(session: Session, seen: Grant, *group: str) -> list[tuple[Any, ...]]:
    """(*group, lookups, lookup hits, seconds saved) from raw and rolled-up events alike."""
    events = counted_events()
    columns = [events.c[name] for name in group]
    count = events.c["count"]
    query = seen.limit(select(
        *columns,
        func.coalesce(func.sum(count), 0),
        func.sum(case((events.c.outcome == "hit", count), else_=0)),
        func.coalesce(func.sum(events.c.saved_seconds), 0.0),
    ), events.c.namespace).where(events.c.kind.in_(LOOKUP_KINDS))
    if columns:
        query = query.group_by(*columns)
    return [tuple(r) for r in session.execute(query)]


def _summary(lookups: int, lookup_hits: int | None, saved: float) -> dict[str, Any]:
    # Postgres sums a bigint as numeric: the driver gives a Decimal.
    lookups, lookup_hits = int(lookups), int(lookup_hits or 0)
    return {
        "lookups": lookups,
        "lookup_hits": lookup_hits,
        "hits": lookup_hits,  # deprecated alias of lookup_hits
        "misses": lookups - lookup_hits,
        "hit_rate": round(lookup_hits / lookups, 4) if lookups else None,
        "compile_seconds_saved": round(float(saved or 0.0), 3),
    }


@router.get("/stats")
def stats(request: Request) -> dict[str, Any]:
    """Lookups and compile requests count as lookups (`lookup_hits` of them answered by an
    artifact); downloads of artifact files are counted apart (`downloads`). Only the token's
    namespaces are counted."""
    seen = grant(request)
    context(request).events.flush()  # this process's own events count at once
    with context(request).db.session() as session:
        (lookups, lookup_hits, saved), = _cache_counts(session, seen)
        by_target = {t: _summary(n, h, s) for t, n, h, s in _cache_counts(session, seen, "target")}
        by_compiler = {
            f"{name}=={version}": _summary(n, h, s)
            for name, version, n, h, s in _cache_counts(session, seen, "compiler_name", "compiler_version")
        }
        events = counted_events()
        downloads = int(session.scalar(seen.limit(select(func.sum(events.c["count"])), events.c.namespace)
                                       .where(events.c.kind == "download")) or 0)
        compiles = dict(
            session.execute(
                seen.limit(select(Job.state, func.count()), Job.namespace)
                .where(Job.state.in_((JobState.SUCCEEDED, JobState.FAILED)))
                .group_by(Job.state)
            ).all()
        )
    return {
        **_summary(lookups, lookup_hits, saved),
        "downloads": downloads,
        "compiles_succeeded": compiles.get(JobState.SUCCEEDED, 0),
        "compiles_failed": compiles.get(JobState.FAILED, 0),
        "by_target": by_target,
        "by_compiler": by_compiler,
    }


@router.get("/hits", responses=error_responses(*PREFIX_ERRORS))
def hits(
    request: Request,
    key: str | None = Query(None, description="artifact key, or a unique prefix of it (8 hex characters at least)",
                            json_schema_extra={"pattern": KEY_FILTER_PATTERN}),
    caller: Annotated[Text | None, Query(description="token name")] = None,
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
) -> dict[str, Any]:
    """Which caller hit which artifact, and when, in the token's namespaces: raw hits newest first
    (`count` 1), then the hits rolled up into hourly counts past the event retention, newest
    hour first (`at`: the hour, `count`: its hits of that key, kind and caller)."""
    seen = grant(request)
    context(request).events.flush()  # this process's own events count at once
    with context(request).db.session() as session:
        # A whole key filters as it is (no artifact, no hits); a shorter one names an artifact.
        full = key_prefix(key) if key else None
        if key and len(full or "") != KEY_LENGTH:
            full = resolve_key(session, key)
        raw = _hits_query(seen, CacheEvent, full, caller).order_by(CacheEvent.at.desc(), CacheEvent.id.desc())
        found = [_hit_view(e, e.caller, e.at, 1) for e in session.scalars(raw.limit(limit))]
        if len(found) < limit:
            rolled = _hits_query(seen, CacheEventHour, full, caller).order_by(CacheEventHour.hour.desc(),
                                                                               CacheEventHour.id.desc())
            found += [_hit_view(h, h.caller or None, h.hour, h.count)
                      for h in session.scalars(rolled.limit(limit - len(found)))]
        return {"hits": found}


def _hits_query(seen: Grant, table: type[CacheEvent] | type[CacheEventHour], key: str | None,
                caller: str | None) -> Any:
    """The token's hits in raw events or roll-ups (same columns), of `key` and `caller` if given."""
    query = seen.limit(select(table), table.namespace).where(table.outcome == "hit")
    if key is not None:
        query = query.where(table.key == key)
    if caller:
        query = query.where(table.caller == caller)
    return query


def _hit_view(e: CacheEvent | CacheEventHour, caller: str | None, at: datetime, count: int) -> dict[str, Any]:
    return {"key": e.key, "caller": caller, "kind": e.kind, "outcome": e.outcome, "target": e.target, "at": iso(at),
            "count": count}
