"""What the cache holds against its quota: stored and pinned bytes, per namespace, and the last
GC pass (what it evicted, and whether pinned artifacts alone keep it over a quota)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import func, select

from neffcache import gc, pins
from neffcache.db.models import Artifact, GcRun, utcnow
from neffcache.service.auth import READ, grant
from neffcache.service.routes.deps import context
from neffcache.service.views import iso

router = APIRouter(prefix="/v1", tags=["storage"], dependencies=[READ])


@router.get("/storage")
def storage(request: Request) -> dict[str, Any]:
    """Artifact bytes stored and pinned, in total and per namespace (the token's namespaces
    only), the quotas (NEFFCACHE_GC_QUOTA_BYTES, NEFFCACHE_GC_NAMESPACE_QUOTA_BYTES), and the last
    GC pass: when, what it evicted and deleted, and `blocked` when pinned artifacts alone keep
    the cache over a quota."""
    ctx = context(request)
    seen = grant(request)
    sizes = gc.artifact_sizes()
    now = utcnow()
    with ctx.db.session() as session:
        rows = session.execute(seen.limit(
            select(Artifact.namespace, func.count(), func.coalesce(func.sum(sizes.c.size), 0),
                   func.coalesce(func.sum(sizes.c.size).filter(pins.pinned_clause(Artifact.key, now)), 0))
            .outerjoin(sizes, sizes.c.artifact_key == Artifact.key), Artifact.namespace)
            .group_by(Artifact.namespace)).all()
        last = session.scalars(select(GcRun).order_by(GcRun.id.desc()).limit(1)).first()
    quotas = ctx.settings.gc_namespace_quota_bytes
    by_namespace = {ns: {"artifacts": n, "stored_bytes": int(stored), "pinned_bytes": int(pinned),
                         "quota_bytes": quotas.get(ns)} for ns, n, stored, pinned in rows}
    for ns, quota in quotas.items():  # a namespace with a quota and nothing stored yet
        if seen.allows(ns):
            by_namespace.setdefault(ns, {"artifacts": 0, "stored_bytes": 0, "pinned_bytes": 0, "quota_bytes": quota})
    return {
        "artifacts": sum(v["artifacts"] for v in by_namespace.values()),
        "stored_bytes": sum(v["stored_bytes"] for v in by_namespace.values()),
        "pinned_bytes": sum(v["pinned_bytes"] for v in by_namespace.values()),
        "quota_bytes": ctx.settings.gc_quota_bytes,
        "ttl_s": ctx.settings.gc_ttl_s,
        "by_namespace": dict(sorted(by_namespace.items())),
        "last_gc": None if last is None else {
            "started_at": iso(last.started_at), "finished_at": iso(last.finished_at), "holder": last.holder,
            "evicted_artifacts": last.evicted_artifacts, "evicted_bytes": last.evicted_bytes,
            "objects_deleted": last.objects_deleted, "bytes_deleted": last.bytes_deleted,
            "blobs_deleted": last.blobs_deleted, "jobs_deleted": last.jobs_deleted,
            "events_rolled_up": last.events_rolled_up,
        },
        # Only what the token may see: the deployment's quota, and its namespaces' ones.
        "blocked": [b.describe() for b in (gc.blocked_of(last) if last is not None else [])
                    if b.namespace is None or seen.allows(b.namespace)],
    }
