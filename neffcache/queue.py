"""Queue names and enqueueing: one RQ queue per toolchain, so a job reaches only a host
that has exactly the compiler its key names.

The service enqueues and the workers listen; both name queues through this module so the
two sides cannot drift. Jobs are enqueued by the dotted path of the task, so the service
never imports the workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neffcache.toolchain import release_version

COMPILE_TASK = "neffcache.workers.tasks.run_compile_job"
NEURON_FAMILY = "neuron"
# RQ's names: a job's hash, a queue's list, and the statuses of a job not yet ended.
RQ_JOB_KEY = "rq:job:{}"
RQ_QUEUE_KEY = "rq:queue:{}"
RQ_WAITING = ("queued", "deferred", "scheduled")
RQ_STARTED = "started"


def _queue(prefix: str, compiler: str, version: str, target: str, isa: str | None) -> str:
    if compiler == "neuronx-cc":
        # Any compile host with this compiler builds every Neuron target.
        return f"{prefix}:{compiler}:{version}:{NEURON_FAMILY}"
    # Inductor builds for the host it runs on: the target and ISA pick the host.
    return f"{prefix}:{compiler}:{version}:{target}:{isa}"


def queue_for_manifest(prefix: str, manifest: Mapping[str, Any]) -> str:
    compiler = manifest["compiler"]
    return _queue(prefix, compiler["name"], compiler["version"], manifest["target"], manifest.get("isa"))


def queues_for_toolchain(
    prefix: str,
    compiler_name: str,
    compiler_version: str,
    targets: Iterable[str],
    isas: Iterable[str],
) -> list[str]:
    """Every queue a worker with this toolchain serves: its exact version and its release."""
    # A spec may name a release without its build ("2.27.5334.0"): serve that queue too.
    versions = dict.fromkeys([compiler_version, release_version(compiler_version)])
    names: list[str] = []
    for version in versions:
        if compiler_name == "neuronx-cc":
            names.append(_queue(prefix, compiler_name, version, NEURON_FAMILY, None))
            continue
        for target in targets:
            for isa in isas:
                if (target == "cuda") == isa.startswith("sm_"):
                    names.append(_queue(prefix, compiler_name, version, target, isa))
    return names


def version_matches(requested: str, offered: str) -> bool:
    """A requested version matches a toolchain's exact version, or its release without build."""
    return requested == offered or requested == release_version(offered)


def rq_job_id(job_id: str, attempt: int) -> str:
    """The RQ id of one attempt of a job (RQ ids allow letters, digits, "_" and "-")."""
    return f"{job_id}_{attempt}"


def enqueue_compile(redis: Any, queue_name: str, job_id: str, attempt: int) -> None:
    """Put one attempt of a job on its queue. The RQ id names the attempt; a duplicate delivery
    is harmless because the worker's claim is conditional on the job's state."""
    from rq import Queue  # imported here: the client never needs rq

    queue = Queue(queue_name, connection=redis)
    kwargs: dict[str, Any] = {
        "job_id": rq_job_id(job_id, attempt),
        "job_timeout": -1,  # the worker enforces the compile timeout itself, per process group
        "result_ttl": 3600,
        "failure_ttl": 7 * 24 * 3600,
        "description": f"compile job {job_id} attempt {attempt}",
    }
    queue.enqueue(COMPILE_TASK, job_id, **kwargs)


@dataclass(frozen=True)
class Presence:
    """What Redis holds of one RQ job: its status (None: no such job), whether its id is in its
    queue's list, and the RQ worker running it (for `started`; our workers' RQ names are their
    worker ids)."""

    status: str | None
    listed: bool = False
    worker: str | None = None

    def held(self, live_workers: Iterable[str]) -> bool:
        """Whether this attempt will still run: waiting in its queue, or started by a worker
        that is alive. Anything else (gone with a Redis that lost its data, ended without the
        job being claimed, started by a worker since lost) will never run by itself."""
        if self.status == "queued":
            return self.listed
        if self.status == RQ_STARTED:
            return self.worker in set(live_workers)
        return self.status in RQ_WAITING


def presence(redis: Any, queue_name: str, rq_ids: Sequence[str]) -> dict[str, Presence]:
    """What Redis holds of these RQ jobs of one queue: one pipelined read of their hashes, and
    the queue's list read once if any says `queued` (so a hash left without its list entry, as
    after a partial loss, does not count as waiting)."""
    if not rq_ids:
        return {}
    pipe = redis.pipeline(transaction=False)
    for rq_id in rq_ids:
        pipe.hmget(RQ_JOB_KEY.format(rq_id), "status", "worker_name")
    replies = pipe.execute()
    found = {rq_id: (_text(status), _text(worker)) for rq_id, (status, worker) in zip(rq_ids, replies, strict=True)}
    listed: set[str] = set()
    if any(status == "queued" for status, _ in found.values()):
        listed = {_text(member) or "" for member in redis.lrange(RQ_QUEUE_KEY.format(queue_name), 0, -1)}
    return {rq_id: Presence(status, rq_id in listed, worker or None) for rq_id, (status, worker) in found.items()}


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def connect_redis(url: str) -> Any:
    from redis import Redis

    return Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
