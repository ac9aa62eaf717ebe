"""Prewarm: what a deployment uses, built again for a new toolchain before the rollout.

Every Neuron SDK release changes neuronx-cc's version, and with it every key. POST /v1/prewarm
takes the deployment's sources (the artifacts its lock file names, its spec file's entries, or
the artifacts with the most lookup hits of late in the token's namespaces), re-keys each for the
new toolchain (the same model, inputs, target, namespace, compiler name and flags; the new
compiler version; the runtime given, or resolved as any spec's is) and submits it exactly as
POST /v1/compile does (service.compile_decisions.submit_compile, never forced), so it joins what exists. With
`submit` false it only says how ready each entry is, and submits and counts nothing.

Each entry ends in one of STATUSES; what is wrong with one entry (a flag the rules refuse, a
pairing the SDK table refuses, a folder the farm does not build, no live worker for the
toolchain) is that entry's answer, never the request's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from neffcache import rollup
from neffcache.db.models import Artifact, Job, utcnow
from neffcache.errors import InvalidSpec, NeffcacheError, NotFound, ToolchainUnavailable
from neffcache.key import spec_for_manifest
from neffcache.lifecycle import ACTIVE_STATES
from neffcache.queue import queue_for_manifest
from neffcache.rollup import LOOKUP_KINDS
from neffcache.service import cache, compile_decisions
from neffcache.service.auth import Grant
from neffcache.service.context import ServiceContext
from neffcache.service.toolchains import live_queues, require_live_worker
from neffcache.service.views import job_view
from neffcache.spec import TORCH_NEURONX, CompileSpec, PrewarmRequest

READY, COMPILING, FAILED, MISSING, UNBUILDABLE, REFUSED = (
    "ready", "compiling", "failed", "missing", "unbuildable", "refused")
# missing: not built and nothing compiling it (only a request with `submit` false answers it).
STATUSES = (READY, COMPILING, FAILED, MISSING, UNBUILDABLE, REFUSED)


@dataclass
class Source:
    """One entry to re-key: a published artifact (its manifest as a spec) or a spec entry."""

    spec: CompileSpec | None  # None: it could not be read, `error` says why
    source_key: str | None = None
    name: str | None = None
    lookup_hits: int | None = None  # a `top` source's, in the window
    error: NeffcacheError | None = None

    def view(self) -> dict[str, Any]:
        return {"source_key": self.source_key, "spec": self.name,
                **({"lookup_hits": self.lookup_hits} if self.lookup_hits is not None else {})}


def rekeyed(spec: CompileSpec, compiler_version: str, runtime_version: str | None) -> CompileSpec:
    """`spec` for another toolchain: the new compiler version, and the runtime given or left for
    the resolver (service.toolchains.resolve_spec: the SDK release's runtime; for inductor the
    torch that is also the compiler). For torch-neuronx the version is torch-neuronx's, and the
    torch and neuronx-cc it goes with are resolved as well (from the live workers that have it)."""
    assert spec.runtime is not None  # the schema fills in the runtime name
    with_it = {"torch_version": None, "neuronx_cc_version": None} if spec.compiler.name == TORCH_NEURONX else {}
    return spec.model_copy(update={
        "compiler": spec.compiler.model_copy(update={"version": compiler_version, **with_it}),
        "runtime": spec.runtime.model_copy(update={"version": runtime_version}),
    })


def prewarm(ctx: ServiceContext, request: PrewarmRequest, grant: Grant) -> dict[str, Any]:
    """The answer to POST /v1/prewarm: each entry's re-keyed key and status, and the totals."""
    sources = _sources(ctx, request, grant)
    with ctx.db.session() as session:
        queues = live_queues(session, ctx.settings.worker_lost_after_s)
    decided: dict[str, dict[str, Any]] = {}  # new key -> what was decided for it (once per key)
    entries = [_entry(ctx, source, request, grant.caller, queues, decided) for source in sources]
    counted = Counter(e["status"] for e in entries)
    return {
        "compiler_version": request.compiler_version,
        "runtime_version": request.runtime_version,
        "submitted": request.submit,
        "entries": entries,
        "totals": {status: counted.get(status, 0) for status in STATUSES},
        "keys": len(decided),
    }


def _sources(ctx: ServiceContext, request: PrewarmRequest, grant: Grant) -> list[Source]:
    """The request's entries, in its order. Every namespace they name must be the token's (403)."""
    if request.specs is not None:
        for entry in request.specs:
            grant.check(entry.spec.namespace)
        return [Source(entry.spec, name=entry.name) for entry in request.specs]
    with ctx.db.session() as session:
        if request.keys is not None:
            found = {a.key: a for a in session.scalars(select(Artifact).where(Artifact.key.in_(set(request.keys))))}
            for artifact in found.values():
                grant.check(artifact.namespace)
            return [_artifact_source(found[key]) if key in found
                    else Source(None, key, error=NotFound(f"no artifact for key {key}: nothing to build again"))
                    for key in request.keys]
        assert request.top is not None
        ctx.events.flush()  # this process's own events count at once
        since = utcnow() - timedelta(days=request.top.since_days)
        return [_artifact_source(artifact, hits) for artifact, hits in most_used(session, grant, request.top.n, since)]


def most_used(session: Session, grant: Grant, n: int, since: Any) -> list[tuple[Artifact, int]]:
    """The `n` published artifacts with the most lookup hits (lookups and compile requests they
    answered) since `since`, in the token's namespaces, most used first, with their counts."""
    events = rollup.counted_events()  # raw and rolled-up events alike
    hits = func.sum(events.c["count"]).label("hits")
    counted = (grant.limit(select(events.c.key, hits), events.c.namespace)
               .where(events.c.kind.in_(LOOKUP_KINDS), events.c.outcome == "hit", events.c.at >= since)
               .group_by(events.c.key).subquery())
    query = (grant.limit(select(Artifact, counted.c.hits), Artifact.namespace)
             .join(counted, counted.c.key == Artifact.key)
             .order_by(counted.c.hits.desc(), Artifact.key).limit(n))
    return [(artifact, int(count)) for artifact, count in session.execute(query).all()]


def _artifact_source(artifact: Artifact, lookup_hits: int | None = None) -> Source:
    """An artifact as the spec it was built from (neffcache.key.spec_for_manifest)."""
    try:
        spec = CompileSpec.model_validate(spec_for_manifest(artifact.manifest))
    except (ValidationError, KeyError, TypeError) as exc:  # a manifest of another key version's layout
        return Source(None, artifact.key, lookup_hits=lookup_hits, error=InvalidSpec(
            f"artifact {artifact.key}: its manifest does not read as a compile spec ({_first_problem(exc)})"))
    return Source(spec, artifact.key, lookup_hits=lookup_hits)


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg')}"
    return f"{type(exc).__name__}: {exc}"


def _entry(ctx: ServiceContext, source: Source, request: PrewarmRequest, caller: str | None, queues: set[str],
           decided: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One source: re-keyed, then decided once per new key (a second source of the same key gets
    the first one's answer, `deduplicated`)."""
    entry = source.view()
    try:
        if source.error is not None:
            raise source.error
        assert source.spec is not None
        spec = rekeyed(source.spec, request.compiler_version, request.runtime_version)
        resolved, spec_out, manifest, key = cache.resolve_key(ctx, spec)
    except ToolchainUnavailable as exc:
        return {**entry, "key": None, **_refusal(UNBUILDABLE, exc)}
    except NeffcacheError as exc:
        return {**entry, "key": None, **_refusal(REFUSED, exc)}
    entry.update(key=key, compiler=spec_out["compiler"], runtime=spec_out["runtime"])
    if key in decided:
        return {**entry, **decided[key], "deduplicated": True}
    decided[key] = _decide(ctx, resolved, manifest, key, request.submit, caller, queues)
    return {**entry, **decided[key]}


def _decide(ctx: ServiceContext, spec: CompileSpec, manifest: dict[str, Any], key: str, submit: bool,
            caller: str | None, queues: set[str]) -> dict[str, Any]:
    """A re-keyed spec's status: submitted as a compile request (`submit`), or read as it stands."""
    with ctx.db.session() as session:
        artifact = cache.published(ctx, session, key)
        standing = (_standing(compile_decisions.latest_job(session, key), ctx.settings.failure_ttl_s)
                    if artifact is None and not submit else None)
    if artifact is None:
        # Checked before anything is submitted: a job no live worker listens for would wait unseen.
        try:
            compile_decisions.check_farm_builds(spec)
        except NeffcacheError as exc:
            return _refusal(REFUSED, exc)
        try:
            require_live_worker(queues, queue_for_manifest(ctx.settings.queue_prefix, manifest), manifest)
        except ToolchainUnavailable as exc:
            return _refusal(UNBUILDABLE, exc)
    if not submit:
        return {"status": READY} if standing is None else standing
    try:
        outcome = compile_decisions.submit_compile(ctx, spec, force=False, caller=caller)
    except NeffcacheError as exc:  # blob_missing: the model is no longer stored
        return _refusal(REFUSED, exc)
    body = outcome.body
    return {"status": READY} if body["status"] == "hit" else _job_status(body["job"], body["status"] == "failed")


def _standing(job: Job | None, failure_ttl_s: float | None) -> dict[str, Any]:
    """What a compile request would find for a key that has no artifact, without making it: the
    key's active job (compiling), a remembered failure (failed), or nothing (missing)."""
    if job is not None and job.state in ACTIVE_STATES:
        return _job_status(job_view(job), failed=False)
    if compile_decisions.remembered_failure(job, failure_ttl_s):
        return _job_status(job_view(job), failed=True)
    return {"status": MISSING}


def _job_status(job: dict[str, Any], failed: bool) -> dict[str, Any]:
    """An entry's status from its key's job (a job view): compiling, or failed with the job's
    failure class, message and log tail (which name the flag or operator at fault)."""
    if not failed:
        return {"status": COMPILING, "job_id": job["id"]}
    return {"status": FAILED, "job_id": job["id"], "failure_class": job["failure_class"], "message": job["message"],
            "log_tail": job["log_tail"]}


def _refusal(status: str, exc: NeffcacheError) -> dict[str, Any]:
    return {"status": status, "error": exc.code, "reason": exc.detail}
