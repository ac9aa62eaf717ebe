"""Cache statistics: hit rate and compile time saved, in total and by target and compiler."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from neffcache.db.models import FAILED, SUCCEEDED, CacheEvent, Job
from neffcache.service.auth import READ
from neffcache.service.pagination import MAX_LIMIT
from neffcache.service.routes.deps import context
from neffcache.service.views import iso

router = APIRouter(prefix="/v1", tags=["stats"], dependencies=[READ])
LOOKUP_KINDS = ("lookup", "compile")


def _cache_counts(session: Session, *group: Any) -> list[tuple[Any, ...]]:
    hit = func.sum(case((CacheEvent.outcome == "hit", 1), else_=0))
    query = select(
        *group,
        func.count(),
        hit,
        func.coalesce(func.sum(CacheEvent.saved_seconds), 0.0),
    ).where(CacheEvent.kind.in_(LOOKUP_KINDS))
    if group:
        query = query.group_by(*group)
    return [tuple(r) for r in session.execute(query)]


def _summary(lookups: int, hits: int | None, saved: float) -> dict[str, Any]:
    hits = int(hits or 0)
    return {
        "lookups": lookups,
        "hits": hits,
        "misses": lookups - hits,
        "hit_rate": round(hits / lookups, 4) if lookups else None,
        "compile_seconds_saved": round(float(saved or 0.0), 3),
    }


@router.get("/stats")
def stats(request: Request) -> dict[str, Any]:
    """Lookups and compile requests count as lookups; downloads are counted apart."""
    with context(request).db.session() as session:
        (lookups, hits, saved), = _cache_counts(session)
        by_target = {t: _summary(n, h, s) for t, n, h, s in _cache_counts(session, CacheEvent.target)}
        by_compiler = {
            f"{name}=={version}": _summary(n, h, s)
            for name, version, n, h, s in _cache_counts(session, CacheEvent.compiler_name, CacheEvent.compiler_version)
        }
        downloads = session.scalar(select(func.count()).where(CacheEvent.kind == "download")) or 0
        compiles = dict(
            session.execute(
                select(Job.state, func.count()).where(Job.state.in_((SUCCEEDED, FAILED))).group_by(Job.state)
            ).all()
        )
    return {
        **_summary(lookups, hits, saved),
        "downloads": downloads,
        "compiles_succeeded": compiles.get(SUCCEEDED, 0),
        "compiles_failed": compiles.get(FAILED, 0),
        "by_target": by_target,
        "by_compiler": by_compiler,
    }


@router.get("/hits")
def hits(
    request: Request,
    key: str | None = None,
    caller: str | None = Query(None, description="token name"),
    limit: int = Query(100, ge=1, le=MAX_LIMIT),
) -> dict[str, Any]:
    """Which caller hit which artifact, and when (newest first)."""
    query = select(CacheEvent).where(CacheEvent.outcome == "hit")
    if key:
        query = query.where(CacheEvent.key == key)
    if caller:
        query = query.where(CacheEvent.caller == caller)
    with context(request).db.session() as session:
        rows = session.scalars(query.order_by(CacheEvent.at.desc(), CacheEvent.id.desc()).limit(limit)).all()
        return {"hits": [{"key": e.key, "caller": e.caller, "kind": e.kind, "outcome": e.outcome,
                          "target": e.target, "at": iso(e.at)} for e in rows]}
