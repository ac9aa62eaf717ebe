"""The cache's answers to a spec: its key, resolved from memory when it can be; a hit (lookup
or compile request), answered from memory when everything it needs is there; a lookup's miss
with the nearest published manifests; an artifact's usage counts. What a compile request that is
not a hit decides (a job to join, a remembered failure, a new job) is service.compile_decisions.

Each public function is one unit of work: it opens one session (which commits once, at the
end) and only after that commit does anything outside the database.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neffcache.db.models import Artifact, ArtifactUsage
from neffcache.errors import (
    NeffcacheError,
    NotFound,
    ToolchainAmbiguous,
    ToolchainUnavailable,
)
from neffcache.key import key_for_spec, manifest_diff
from neffcache.rollup import LOOKUP_KINDS
from neffcache.service.auth import Grant
from neffcache.service.context import ServiceContext
from neffcache.service.events import UsageSnapshot
from neffcache.service.toolchains import RegisteredToolchain, resolve_spec
from neffcache.service.views import artifact_view
from neffcache.spec import CompileSpec

NEAREST_LIMIT = 5
NEAREST_SCAN = 200
log = logging.getLogger(__name__)


@dataclass
class Outcome:
    status_code: int
    body: dict[str, Any]


def resolve_key(ctx: ServiceContext, spec: CompileSpec) -> tuple[CompileSpec, dict[str, Any], dict[str, Any], str]:
    """(the spec with both versions filled in, that spec as answers show it, its manifest, its key)."""
    try:
        resolved = resolve_spec(ctx.registered_toolchains, spec, ctx.sdk)
    except (ToolchainUnavailable, ToolchainAmbiguous):
        # The toolchains in memory may predate a worker that just registered: ask again before
        # refusing, so a new worker's toolchain is never refused for being new.
        ctx.toolchains.clear()
        resolved = resolve_spec(ctx.registered_toolchains, spec, ctx.sdk)
    return (resolved, *_keyed(resolved))


def _keyed(resolved: CompileSpec) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A resolved spec as answers show it, and its manifest and key (computed from that)."""
    spec_out = resolved.model_dump(mode="json")
    manifest, key = key_for_spec(spec_out)
    return spec_out, manifest, key


class _NotInMemory(Exception):
    """What the warm path needs is not in memory: the request takes the database path."""


@dataclass(frozen=True)
class Resolved:
    """A spec resolved from memory: both versions filled in (as the answer shows it), its
    manifest and key."""

    spec: dict[str, Any]
    manifest: dict[str, Any]
    key: str
    # The registered toolchains it was resolved against; None when the spec named both versions
    # and needed none. The resolution holds while ctx.toolchains holds that same list.
    toolchains: list[RegisteredToolchain] | None

    def holds(self, ctx: ServiceContext) -> bool:
        return self.toolchains is None or ctx.toolchains.get(ctx.ALL_TOOLCHAINS) is self.toolchains


def resolve_in_memory(ctx: ServiceContext, spec: CompileSpec) -> Resolved | None:
    """resolve_key without the database, or None when it would need it, or refuse the spec
    (the database path then answers, and says why)."""
    consulted: list[list[RegisteredToolchain]] = []

    def toolchains() -> list[RegisteredToolchain]:
        found = ctx.toolchains.get(ctx.ALL_TOOLCHAINS)
        if found is None:
            raise _NotInMemory
        consulted.append(found)
        return found

    try:
        resolved = resolve_spec(toolchains, spec, ctx.sdk)
    except (_NotInMemory, NeffcacheError):
        return None
    return Resolved(*_keyed(resolved), consulted[0] if consulted else None)


def warm_hit(ctx: ServiceContext, kind: str, resolved: Resolved, caller: str | None,
             source: str = "memory") -> Outcome | None:
    """The hit answered from memory alone (no database, no thread: called in the event loop), or
    None when anything it needs is not in memory or the key is not a hit: the database path
    then answers. `source` names who answered, for the metrics (the route or the hit lane)."""
    artifact = ctx.artifacts.get(resolved.key)
    snapshot = ctx.usage.get(resolved.key) if artifact is not None else None
    if artifact is None or snapshot is None:
        return None
    return hit(ctx, kind, resolved.spec, resolved.manifest, artifact, caller, snapshot, source)


def hit(ctx: ServiceContext, kind: str, spec_out: dict[str, Any], manifest: dict[str, Any], artifact: Artifact,
         caller: str | None, snapshot: UsageSnapshot | None = None, source: str = "memory") -> Outcome:
    """A hit's answer, for lookup and compile alike, its event recorded first (the counts it
    shows include it); with the usage `snapshot` in memory it asks the database nothing."""
    record(ctx, kind, manifest, artifact.key, artifact, caller)
    ctx.metrics.hit_served(kind, "database" if snapshot is None else source)
    usage = artifact_hits(ctx, artifact.key) if snapshot is None else _usage_now(ctx, artifact.key, snapshot)
    return Outcome(200, {"status": "hit", "key": artifact.key, "spec": spec_out,
                         "artifact": artifact_view(artifact, usage)})


def published(ctx: ServiceContext, session: Session, key: str) -> Artifact | None:
    """The artifact of a whole key, from memory when it was read in the last hot_cache_s
    (artifacts are immutable); a miss is asked of the database every time, so an artifact is
    found as soon as it is published."""
    def load() -> Artifact | None:
        artifact = session.get(Artifact, key)
        if artifact is not None:
            # Out of the session, with its files: an object kept in memory must not be expired
            # by that session's rollback (a request refused after reading it) or commit.
            for entry in artifact.files:
                session.expunge(entry)
            session.expunge(artifact)
        return artifact

    return ctx.artifacts.get_or_load(key, load)


def record(ctx: ServiceContext, kind: str, manifest: dict[str, Any], key: str, artifact: Artifact | None,
            caller: str | None) -> None:
    """Count the request (metrics) and record its event, written off the request path (service.events)."""
    outcome = "hit" if artifact is not None else "miss"
    ctx.events.record(kind, outcome, manifest, key, caller, artifact.compile_seconds if artifact is not None else 0.0)
    ctx.metrics.cache_request(kind, outcome, manifest["target"])
    if artifact is not None and kind in LOOKUP_KINDS:
        ctx.metrics.compile_seconds_saved(manifest["target"], artifact.compile_seconds)


def usage_in_memory(ctx: ServiceContext, key: str) -> dict[str, int] | None:
    """artifact_hits when its written counts were read in the last hot_cache_s; else None."""
    snapshot = ctx.usage.get(key)
    return None if snapshot is None else _usage_now(ctx, key, snapshot)


def _usage_now(ctx: ServiceContext, key: str, snapshot: UsageSnapshot) -> dict[str, int]:
    lookups, downloads = snapshot.now(ctx.events.recorded_usage(key))
    return {"lookup_hits": lookups, "downloads": downloads}


def warm_artifact(ctx: ServiceContext, key: str, grant: Grant, source: str = "memory") -> dict[str, Any] | None:
    """An artifact's view (with its counts) from memory alone, by its whole key; None when
    either is not in memory or the token may not see it (the database path refuses it)."""
    artifact = ctx.artifacts.get(key)
    usage = usage_in_memory(ctx, key) if artifact is not None else None
    if artifact is None or usage is None or not grant.allows(artifact.namespace):
        return None
    ctx.metrics.hit_served("artifact", source)
    return artifact_view(artifact, usage)


def artifact_hits(ctx: ServiceContext, key: str) -> dict[str, int]:
    """How often an artifact was used, as two counts named apart (the same two /v1/stats gives):
    `lookup_hits`, the lookups and compile requests it answered, and `downloads` of its files.
    Called with no session open: it may wait for a flush, which on SQLite waits for readers.

    The written counts (one row, by key) as read at most hot_cache_s ago, plus every event this
    process recorded since that read: exact for this process's own events, and at most
    hot_cache_s behind for other processes'."""
    def read() -> UsageSnapshot:
        def written() -> tuple[int, int]:
            with ctx.db.session() as session:
                row = session.get(ArtifactUsage, key)
                return (row.lookup_hits, row.downloads) if row is not None else (0, 0)

        return ctx.events.usage_snapshot(key, written)

    snapshot = ctx.usage.get_or_load(key, read)
    assert snapshot is not None
    return _usage_now(ctx, key, snapshot)


def lookup(ctx: ServiceContext, spec: CompileSpec, grant: Grant) -> Outcome:
    """A hit, or NotFound with the nearest published manifests the token may see."""
    _, spec_out, manifest, key = resolve_key(ctx, spec)
    with ctx.db.session() as session:  # no connection is taken unless a query needs one
        artifact = published(ctx, session, key)
        nearest = nearest_manifests(session, manifest, grant) if artifact is None else []
    if artifact is not None:
        return hit(ctx, "lookup", spec_out, manifest, artifact, grant.caller)
    record(ctx, "lookup", manifest, key, None, grant.caller)
    raise NotFound(
        f"no artifact for key {key}" + (f"; {len(nearest)} published for the same model differ" if nearest else
                                       "; nothing is published for this model"),
        key=key,
        nearest=nearest,
    )


def nearest_manifests(session: Session, manifest: dict[str, Any], grant: Grant) -> list[dict[str, Any]]:
    """Published manifests of the same model in the token's namespaces, closest first, with the
    fields that differ."""
    query = grant.limit(select(Artifact).where(Artifact.model_digest == manifest["model"]["digest"]),
                        Artifact.namespace)
    rows = session.scalars(query.order_by(Artifact.created_at.desc()).limit(NEAREST_SCAN)).all()
    scored = [(manifest_diff(manifest, a.manifest), a) for a in rows]
    scored.sort(key=lambda pair: len(pair[0]))
    return [{"key": a.key, "differs": diff, "manifest": a.manifest} for diff, a in scored[:NEAREST_LIMIT]]


def record_download(ctx: ServiceContext, artifact: Artifact, caller: str | None, size: int) -> None:
    """A download of one of the artifact's files, of `size` bytes."""
    record(ctx, "download", artifact.manifest, artifact.key, artifact, caller)
    ctx.metrics.downloaded(artifact.manifest["target"], size)
