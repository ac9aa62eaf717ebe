"""How database rows look on the wire: one function per resource, used by every route."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from neffcache.db.models import Artifact, Job, Pin, Worker
from neffcache.digests import bare_hex
from neffcache.lifecycle import JobState


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def artifact_view(artifact: Artifact, usage: Mapping[str, int] | None = None) -> dict[str, Any]:
    """An artifact; with `usage` (service.cache.artifact_hits) its `lookup_hits` and `downloads`.

    `hits` is kept as a deprecated alias of `lookup_hits`, the meaning /v1/stats gives it, for
    clients released before the two counts were named apart (`neffcache show` and `lookup` print
    it); it no longer counts downloads."""
    body: dict[str, Any] = {
        "key": artifact.key,
        "manifest": artifact.manifest,
        "files": [
            {"name": f.name, "sha256": bare_hex(f.digest), "digest": f.digest, "size": f.size,
             **({"neff": f.neff} if f.neff else {})}
            for f in artifact.files
        ],
        "compile_seconds": round(artifact.compile_seconds, 3),
        "created_at": iso(artifact.created_at),
        "job_id": artifact.job_id,
        "namespace": artifact.namespace,
        # Who made the bytes: the farm (job_id is its job) or a push, and by which token.
        "origin": {"kind": artifact.origin, "token": artifact.origin_token},
        "annotations": artifact.annotations or {},
    }
    if usage is not None:
        lookup_hits, downloads = int(usage.get("lookup_hits", 0)), int(usage.get("downloads", 0))
        body.update({"lookup_hits": lookup_hits, "downloads": downloads, "hits": lookup_hits})
    return body


def job_view(job: Job) -> dict[str, Any]:
    manifest = job.manifest
    return {
        "id": job.id,
        "key": job.key,
        "namespace": job.namespace,
        "state": job.state,
        "failure_class": job.failure_class,
        "message": job.message,
        "log_tail": job.log_tail,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "target": manifest["target"],
        "compiler": manifest["compiler"],
        "runtime": manifest["runtime"],
        "queue": job.queue,
        "worker": job.worker_id,
        "requested_by": job.requested_by,
        "cancel_requested": job.cancel_requested,
        "annotations": job.annotations or {},
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "artifact": job.key if job.state == JobState.SUCCEEDED else None,
    }


def worker_view(worker: Worker, state: str) -> dict[str, Any]:
    return {
        "id": worker.id,
        "host": worker.host,
        "pid": worker.pid,
        "toolchain": worker.toolchain,
        "queues": worker.queues,
        "state": state,
        "current_job": worker.current_job,
        "started_at": iso(worker.started_at),
        "last_heartbeat": iso(worker.last_heartbeat),
    }


def pin_view(pin: Pin, sizes: Mapping[str, tuple[str, int]], expired: bool, shown: Callable[[str | None], bool],
             with_entries: bool = True) -> dict[str, Any]:
    """A pin. `sizes`: {key: (namespace, bytes)} of its artifacts that exist (neffcache.pins.
    artifact_sizes); `shown(namespace)` says whether an entry is shown to this token (None: an
    artifact that no longer exists); the others are only counted, as `hidden`. `artifacts`,
    `missing` and `bytes` count the entries shown."""
    entries = []
    hidden = 0
    for entry in pin.entries:
        namespace, size = sizes.get(entry.artifact_key, (None, None))
        if not shown(namespace):
            hidden += 1
            continue
        entries.append({"key": entry.artifact_key, "namespace": namespace, "exists": namespace is not None,
                        "bytes": size})
    body: dict[str, Any] = {
        "name": pin.name,
        "owner": pin.owner,
        "note": pin.note,
        "created_at": iso(pin.created_at),
        "expires_at": iso(pin.expires_at),
        "expired": expired,
        "artifacts": len(entries),
        "missing": sum(1 for e in entries if not e["exists"]),
        "bytes": sum(e["bytes"] or 0 for e in entries),
        "hidden": hidden,
    }
    if with_entries:
        body["entries"] = entries
    return body
