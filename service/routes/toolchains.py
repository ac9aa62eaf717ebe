"""Toolchains: the SDK releases (their compiler and runtime) and which have live workers."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from neffcache.db.models import Worker
from neffcache.lifecycle import heard_since
from neffcache.sdk import sdk_releases_of
from neffcache.service.auth import READ
from neffcache.service.routes.deps import context
from neffcache.toolchain import release_version

router = APIRouter(prefix="/v1", tags=["toolchains"], dependencies=[READ])


@router.get("/toolchains")
def toolchains(request: Request) -> dict[str, Any]:
    """Every Neuron SDK release with its neuronx-cc and runtime versions and its live workers,
    and every toolchain live workers offer (with the releases that ship it)."""
    ctx = context(request)
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
    neuron_live = {release_version(v): n for (name, v, _, _), n in offered.items() if name == "neuronx-cc"}
    return {
        "releases": [
            {
                "sdk": r.sdk,
                "neuronx_cc": list(r.compilers),
                "runtime": list(r.runtimes),
                "torch_neuronx": list(r.torch_neuronx),
                "instances": list(r.instances),
                "live_workers": sum(neuron_live.get(c, 0) for c in r.compilers),
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
            }
            for (name, version, runtime, packages), count in sorted(offered.items())
        ],
    }
