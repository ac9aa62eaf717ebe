"""Cache statistics: hit rate and compile time saved, in total and by target and compiler.

Two counts, named apart here and in the artifact view: `lookup_hits` (lookups and compile
requests answered by a published artifact) and `downloads` (artifact files fetched). `hits` is a
deprecated alias of `lookup_hits`, kept for clients that read it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from neffcache.db.models import CacheEvent, Job
from neffcache.lifecycle import JobState
from neffcache.service.auth import READ, Grant, grant
from neffcache.service.errors import error_responses
from neffcache.service.pagination import MAX_LIMIT
from neffcache.service.resolve import KEY_FILTER_PATTERN, KEY_LENGTH, PREFIX_ERRORS, key_prefix, resolve_key
from neffcache.service.routes.deps import context
from neffcache.service.views import iso
from neffcache.spec import Text

router = APIRouter(prefix="/v1", tags=["stats"], dependencies=[READ])
LOOKUP_KINDS = ("lookup", "compile")


def _cache_counts(session: Session, seen: Grant, *group: Any) -> list[tuple[Any, ...]]:
    hit = func.sum(case((CacheEvent.outcome == "hit", 1), else_=0))
    query = seen.limit(select(
        *group,
        func.count(),
        hit,
        func.coalesce(func.sum(CacheEvent.saved_seconds), 0.0),
    ), CacheEvent.namespace).where(CacheEvent.kind.in_(LOOKUP_KINDS))
    if group:
        query = query.group_by(*group)
    return [tuple(r) for r in session.execute(query)]


def _summary(lookups: int, lookup_hits: int | None, saved: float) -> dict[str, Any]:
    lookup_hits = int(lookup_hits or 0)
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
        by_target = {t: _summary(n, h, s) for t, n, h, s in _cache_counts(session, seen, CacheEvent.target)}
        by_compiler = {
            f"{name}=={version}": _summary(n, h, s)
            for name, version, n, h, s in _cache_counts(session, seen, CacheEvent.compiler_name,
                                                        CacheEvent.compiler_version)
        }
        downloads = session.scalar(seen.limit(select(func.count()).where(CacheEvent.kind == "download"),
                                              CacheEvent.namespace)) or 0
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
    """Which caller hit which artifact, and when (newest first), in the token's namespaces."""
    query = grant(request).limit(select(CacheEvent), CacheEvent.namespace).where(CacheEvent.outcome == "hit")
    context(request).events.flush()  # this process's own events count at once
    if caller:
        query = query.where(CacheEvent.caller == caller)
    with context(request).db.session() as session:
        if key:
            # A whole key filters as it is (no artifact, no hits); a shorter one names an artifact.
            full = key_prefix(key)
            query = query.where(CacheEvent.key == (full if len(full) == KEY_LENGTH else resolve_key(session, key)))
        rows = session.scalars(query.order_by(CacheEvent.at.desc(), CacheEvent.id.desc()).limit(limit)).all()
        return {"hits": [{"key": e.key, "caller": e.caller, "kind": e.kind, "outcome": e.outcome,
                          "target": e.target, "at": iso(e.at)} for e in rows]}
