"""Toolchains: the SDK releases (their compiler and runtime), which have live workers, and what
each toolchain serves: how many artifacts and bytes, and its share of last week's lookup hits, so
an operator sees when an old release can be retired.

The figures are the deployment's, every namespace counted: like /metrics they are counts per
toolchain and name no key, model or namespace."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neffcache import rollup
from neffcache.db.models import Artifact, ArtifactFile, Worker, utcnow
from neffcache.lifecycle import heard_since
from neffcache.sdk import SdkRelease, sdk_releases_of
from neffcache.service.auth import READ
from neffcache.service.routes.deps import context
from neffcache.service.views import iso
from neffcache.toolchain import COMPILER_PACKAGE, TORCH_NEURONX_PACKAGE, release_version

router = APIRouter(prefix="/v1", tags=["toolchains"], dependencies=[READ])
# The share of lookup hits is over this window: the traffic an old release still serves.
HITS_WINDOW = timedelta(days=7)
Served = tuple[str, str, str]  # (compiler name, compiler version, runtime version)


def _served(session: Session) -> dict[Served, tuple[int, int]]:
    """(artifacts, bytes of their files) by the toolchain that built them."""
    toolchain = (Artifact.compiler_name, Artifact.compiler_version, Artifact.runtime_version)
    counts = session.execute(select(*toolchain, func.count()).group_by(*toolchain)).all()
    sizes = dict(((n, v, r), int(b or 0)) for n, v, r, b in session.execute(
        select(*toolchain, func.sum(ArtifactFile.size)).join(ArtifactFile, ArtifactFile.artifact_key == Artifact.key)
        .group_by(*toolchain)).all())
    return {(n, v, r): (int(count), sizes.get((n, v, r), 0)) for n, v, r, count in counts}


def _usage(served: Iterable[tuple[int, int]], hits: int, total_hits: int) -> dict[str, Any]:
    """What a toolchain (or a release's toolchains together) serves."""
    artifacts = sizes = 0
    for count, size in served:
        artifacts, sizes = artifacts + count, sizes + size
    return {"artifacts": artifacts, "bytes": sizes, "lookup_hits": hits,
            "lookup_hits_share": round(hits / total_hits, 4) if total_hits else None}


def _in_release(release: SdkRelease, name: str, version: str) -> bool:
    if name == COMPILER_PACKAGE:
        return release_version(version) in release.compilers
    return name == TORCH_NEURONX_PACKAGE and release_version(version) in release.torch_neuronx


@router.get("/toolchains")
def toolchains(request: Request) -> dict[str, Any]:
    """Every Neuron SDK release with its neuronx-cc and runtime versions, its live workers and
    what its toolchains serve; every toolchain live workers offer (with the releases that ship
    it); and `serving`: every toolchain that has artifacts, live or not. Lookup hits are counted
    per compiler version (an event records no runtime) over the last HITS_WINDOW; their share is
    of all lookup hits in that window (null when there were none)."""
    ctx = context(request)
    since = utcnow() - HITS_WINDOW
    ctx.events.flush()  # this process's own events count at once
    with ctx.db.session() as session:
        live = session.scalars(
            select(Worker).where(heard_since(ctx.settings.worker_lost_after_s))
        ).all()
        offered: dict[tuple[str, str, str, str], int] = {}
        for w in live:
            # torch-neuronx's toolchain is also its torch and neuronx-cc (w.toolchain["packages"]).
            packages = ", ".join(f"{k}=={v}" for k, v in sorted((w.toolchain.get("packages") or {}).items()))
            ident = (w.compiler_name, w.compiler_version, w.runtime_version, packages)
            offered[ident] = offered.get(ident, 0) + 1
        served = _served(session)
        hits = rollup.hits_by_toolchain(session, since)
    total_hits = sum(hits.values())
    neuron_live = {release_version(v): n for (name, v, _, _), n in offered.items() if name == "neuronx-cc"}
    live_toolchains = {(name, version, runtime) for name, version, runtime, _ in offered}

    def release_usage(release: SdkRelease) -> dict[str, Any]:
        return _usage((s for (n, v, _), s in served.items() if _in_release(release, n, v)),
                      sum(h for (n, v), h in hits.items() if _in_release(release, n, v)), total_hits)

    return {
        "releases": [
            {
                "sdk": r.sdk,
                "neuronx_cc": list(r.compilers),
                "runtime": list(r.runtimes),
                "torch_neuronx": list(r.torch_neuronx),
                "instances": list(r.instances),
                "live_workers": sum(neuron_live.get(c, 0) for c in r.compilers),
                **release_usage(r),
            }
            for r in ctx.sdk.releases
        ],
        "live": [
            {
                "compiler": f"{name}=={version}",
                "runtime": runtime,
                "packages": packages,
                "workers": count,
                "sdk_releases": sdk_releases_of(ctx.sdk, name, version),
                **_usage([served.get((name, version, runtime), (0, 0))], hits.get((name, version), 0), total_hits),
            }
            for (name, version, runtime, packages), count in sorted(offered.items())
        ],
        "serving": [
            {
                "compiler": f"{name}=={version}",
                "runtime": runtime,
                "live": (name, version, runtime) in live_toolchains,
                "sdk_releases": sdk_releases_of(ctx.sdk, name, version),
                **_usage([usage], hits.get((name, version), 0), total_hits),
            }
            for (name, version, runtime), usage in sorted(served.items())
        ],
        "lookup_hits_since": iso(since),
        "lookup_hits": total_hits,
    }
