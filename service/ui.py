"""What /ui shows, assembled from the same queries the API answers from.

The figures the API already gives are the API's own route functions called with the page's
request (its grant, so a token sees only its namespaces as it does through the API): /v1/stats,
/v1/storage, /v1/toolchains, /v1/workers and /v1/jobs?state=failed. What no route gives as such
is put together here from the API's helpers: the hourly history (raw and rolled-up cache events,
neffcache.rollup), the queues per toolchain beside the workers that serve them, the recent misses with the
fields that differ from the nearest published artifact (service.cache.nearest_manifests, the
lookup's own answer) and the most used artifacts (service.prewarm.most_used, prewarm's top-N).

A miss event records its key, not its manifest: the manifest is its key's job's (a compile
request's miss makes one). A lookup that nothing compiled since is listed with what the event
itself records (target, compiler) and no nearest artifact."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import Request
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from neffcache import rollup
from neffcache.db.models import CacheEvent, Job, utcnow
from neffcache.lifecycle import ACTIVE_STATES, JobState, WorkerState
from neffcache.rollup import LOOKUP_KINDS
from neffcache.service import prewarm
from neffcache.service.auth import Grant, grant
from neffcache.service.cache import nearest_manifests
from neffcache.service.compile_decisions import latest_job
from neffcache.service.routes import jobs, stats, storage, toolchains, workers
from neffcache.service.routes.deps import context
from neffcache.service.views import iso

HISTORY_HOURS = 48  # the plots' default window
MOST_USED_DAYS = 7
SHOWN = 10  # rows of each list panel
MISSES_SCANNED = 200  # recent miss events read to find SHOWN distinct keys


@dataclass(frozen=True)
class Hour:
    start: datetime
    lookups: int
    lookup_hits: int
    saved_seconds: float

    @property
    def hit_rate(self) -> float | None:
        return self.lookup_hits / self.lookups if self.lookups else None


@dataclass
class Toolchain:
    """A toolchain's queues (those its live workers listen to), their jobs in the token's
    namespaces, and those workers; or a queue no live worker listens to (`workers` empty)."""

    name: str  # compiler==version and runtime; the queue's name when no live worker serves it
    queues: set[str] = field(default_factory=set)
    queued: int = 0
    running: int = 0
    oldest_queued_at: datetime | None = None
    workers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def busy(self) -> int:
        return sum(1 for w in self.workers if w["current_job"])


@dataclass(frozen=True)
class Miss:
    key: str
    at: str | None
    kind: str
    namespace: str | None
    target: str
    compiler: str
    caller: str | None
    misses: int  # of this key among the events read
    job: dict[str, Any] | None  # the key's latest job (state, id), when a compile request made one
    nearest: dict[str, Any] | None  # {"key", "differs": [{"field", "wanted", "found"}]}


def panels(request: Request, hours: int = HISTORY_HOURS) -> dict[str, Any]:
    """Every panel's data, as the request's token may see it."""
    ctx = context(request)
    seen = grant(request)
    summary = stats.stats(request)  # flushes this process's pending events first
    worker_rows = workers.list_workers(request)["workers"]
    failed = jobs.list_jobs(request, state=JobState.FAILED.value, namespace=None, limit=SHOWN, cursor=None)["jobs"]
    served = toolchains.toolchains(request)
    stored = storage.storage(request)
    now = utcnow()
    with ctx.db.session() as session:
        history = hourly(session, seen, now, hours)
        queues = queues_by_toolchain(session, seen, worker_rows)
        misses = recent_misses(session, seen)
        # Plain values before the session ends (its objects expire on commit).
        most_used = [{"key": a.key, "namespace": a.namespace, "target": a.target,
                      "compiler": f"{a.compiler_name}=={a.compiler_version}", "compile_seconds": a.compile_seconds,
                      "created_at": iso(a.created_at), "lookup_hits": hits}
                     for a, hits in prewarm.most_used(session, seen, SHOWN, now - timedelta(days=MOST_USED_DAYS))]
    return {
        "caller": seen.caller,
        "namespaces": list(seen.namespaces),
        "generated_at": iso(now),
        "hours": hours,
        "summary": summary,
        "history": history,
        "queues": queues,
        "workers": worker_rows,
        "misses": misses,
        "most_used": most_used,
        "most_used_days": MOST_USED_DAYS,
        "failed": failed,
        "toolchains": served,
        "storage": stored,
    }


def _as_utc(value: datetime | str) -> datetime:
    """An hour as a reader gets it: SQLite gives rollup.hour_of's text, Postgres a timestamp."""
    at = datetime.fromisoformat(value) if isinstance(value, str) else value
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def hourly(session: Session, seen: Grant, now: datetime, hours: int) -> list[Hour]:
    """Lookups, lookup hits and compile seconds saved in each of the last `hours` hours (the
    current one last), raw and rolled-up events alike, in the token's namespaces; an hour with
    no lookups is there with zeros."""
    first = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours - 1)
    events = rollup.counted_events()
    hour = rollup.hour_of(session.get_bind().dialect.name, events.c.at)
    count = events.c["count"]
    query = (seen.limit(select(hour, func.sum(count), func.sum(case((events.c.outcome == "hit", count), else_=0)),
                               func.coalesce(func.sum(events.c.saved_seconds), 0.0)), events.c.namespace)
             .where(events.c.kind.in_(LOOKUP_KINDS), events.c.at >= first).group_by(hour))
    found = {_as_utc(at): (int(n), int(h or 0), float(s or 0.0)) for at, n, h, s in session.execute(query)}
    return [Hour(start, *found.get(start, (0, 0, 0.0)))
            for start in (first + timedelta(hours=i) for i in range(hours))]


def _toolchain_name(toolchain: Mapping[str, Any]) -> str:
    packages = "".join(f", {k}=={v}" for k, v in sorted((toolchain.get("packages") or {}).items()))
    return (f"{toolchain.get('compiler_name')}=={toolchain.get('compiler_version')}{packages} "
            f"({toolchain.get('runtime_name')} {toolchain.get('runtime_version')})")


def queues_by_toolchain(session: Session, seen: Grant, worker_rows: Iterable[Mapping[str, Any]]) -> list[Toolchain]:
    """Each toolchain live workers offer (/v1/workers' rows), with the jobs queued and running in
    its queues in the token's namespaces; then each queue that has such jobs and no live worker
    listening (its jobs wait for one), most queued first."""
    found: dict[str, Toolchain] = {}
    by_queue: dict[str, Toolchain] = {}
    for worker in worker_rows:
        if worker["state"] in (WorkerState.LOST, WorkerState.STOPPED):
            continue
        name = _toolchain_name(worker["toolchain"] or {})
        toolchain = found.setdefault(name, Toolchain(name))
        toolchain.workers.append(dict(worker))
        toolchain.queues.update(worker["queues"] or ())
        by_queue.update((q, toolchain) for q in worker["queues"] or ())
    for queue, state, n, oldest in session.execute(
            seen.limit(select(Job.queue, Job.state, func.count(), func.min(Job.created_at)), Job.namespace)
            .where(Job.state.in_([s.value for s in ACTIVE_STATES])).group_by(Job.queue, Job.state)):
        toolchain = by_queue.get(queue) or found.setdefault(queue, Toolchain(queue, {queue}))
        if state == JobState.QUEUED:
            toolchain.queued += int(n)
            toolchain.oldest_queued_at = min(filter(None, (toolchain.oldest_queued_at, oldest)))
        else:
            toolchain.running += int(n)
    return sorted(found.values(), key=lambda t: (-t.queued, -t.running, t.name))


def recent_misses(session: Session, seen: Grant) -> list[Miss]:
    """The latest lookups and compile requests that found no artifact, one per key, newest first,
    each with the nearest artifact published for its model (when its manifest is known)."""
    rows = session.scalars(seen.limit(select(CacheEvent), CacheEvent.namespace)
                           .where(CacheEvent.outcome == "miss", CacheEvent.kind.in_(LOOKUP_KINDS))
                           .order_by(CacheEvent.at.desc(), CacheEvent.id.desc()).limit(MISSES_SCANNED)).all()
    latest: dict[str, CacheEvent] = {}
    counts: dict[str, int] = {}
    for event in rows:
        latest.setdefault(event.key, event)
        counts[event.key] = counts.get(event.key, 0) + 1
    found = []
    for key, event in list(latest.items())[:SHOWN]:
        job = latest_job(session, key)
        nearest = None
        if job is not None:
            # The key itself, once its compile succeeded, is no difference to show.
            others = [n for n in nearest_manifests(session, job.manifest, seen) if n["key"] != key]
            nearest = {"key": others[0]["key"], "differs": others[0]["differs"]} if others else None
        found.append(Miss(key, iso(event.at), event.kind, event.namespace, event.target,
                          f"{event.compiler_name}=={event.compiler_version}", event.caller, counts[key],
                          None if job is None else {"id": job.id, "state": job.state}, nearest))
    return found
