"""How database rows look on the wire: one function per resource, used by every route."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from neffcache.db.models import Artifact, Job, Worker, SUCCEEDED


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts else None


def bare_hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


def artifact_view(artifact: Artifact, hits: int | None = None) -> dict[str, Any]:
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
        "annotations": artifact.annotations or {},
    }
    if hits is not None:
        body["hits"] = hits
    return body


def job_view(job: Job) -> dict[str, Any]:
    manifest = job.manifest
    return {
        "id": job.id,
        "key": job.key,
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
        "artifact": job.key if job.state == SUCCEEDED else None,
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
