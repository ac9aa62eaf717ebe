"""Queue names and enqueueing: one RQ queue per toolchain, so a job reaches only a host
that has exactly the compiler its key names.

The service enqueues and the workers listen; both name queues through this module so the
two sides cannot drift. Jobs are enqueued by the dotted path of the task, so the service
never imports the workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neffcache.toolchain import release_version

COMPILE_TASK = "neffcache.workers.tasks.run_compile_job"
NEURON_FAMILY = "neuron"
# Compilers that build every Neuron target on any compile host that has them.
NEURON_COMPILERS = ("neuronx-cc", "torch-neuronx")
# RQ's names: a job's hash, a queue's list, and the statuses of a job not yet ended.
RQ_JOB_KEY = "rq:job:{}"
RQ_QUEUE_KEY = "rq:queue:{}"
RQ_WAITING = ("queued", "deferred", "scheduled")
RQ_STARTED = "started"
# The other packages a compiler's output loads only with, as (manifest field, package): they
# name its queue too, so a job reaches only a host that has every one of those versions.
QUEUED_PACKAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "torch-neuronx": (("torch_version", "torch"), ("neuronx_cc_version", "neuronx-cc")),
}


def _queue(prefix: str, compiler: str, version: str, target: str, isa: str | None) -> str:
    if compiler in NEURON_COMPILERS:
        # Any compile host with this compiler builds every Neuron target.
        return f"{prefix}:{compiler}:{version}:{NEURON_FAMILY}"
    # Inductor builds for the host it runs on: the target and ISA pick the host.
    return f"{prefix}:{compiler}:{version}:{target}:{isa}"


def _with_packages(compiler_name: str, version: str, package_versions: Sequence[str]) -> str:
    """A compiler's version as its queue names it: with the versions of QUEUED_PACKAGES."""
    packages = QUEUED_PACKAGES.get(compiler_name, ())
    return version + "".join(f"+{package}={v}" for (_, package), v in zip(packages, package_versions, strict=True))


def queue_for_manifest(prefix: str, manifest: Mapping[str, Any]) -> str:
    compiler = manifest["compiler"]
    packages = [compiler[field] for field, _ in QUEUED_PACKAGES.get(compiler["name"], ())]
    version = _with_packages(compiler["name"], compiler["version"], packages)
    return _queue(prefix, compiler["name"], version, manifest["target"], manifest.get("isa"))


def queues_for_toolchain(
    prefix: str,
    compiler_name: str,
    compiler_version: str,
    targets: Iterable[str],
    isas: Iterable[str],
    packages: Mapping[str, str] | None = None,
) -> list[str]:
    """Every queue a worker with this toolchain serves: its exact version and its release, and
    so for the versions of its QUEUED_PACKAGES (`packages`, by package name)."""
    # A spec may name a release without its build ("2.27.5334.0"): serve that queue too.
    def both(version: str) -> list[str]:
        return list(dict.fromkeys([version, release_version(version)]))

    wanted = [(packages or {})[package] for _, package in QUEUED_PACKAGES.get(compiler_name, ())]
    versions = [_with_packages(compiler_name, version, chosen)
                for version in both(compiler_version)
                for chosen in itertools.product(*(both(v) for v in wanted))]
    names: list[str] = []
    for version in versions:
        if compiler_name in NEURON_COMPILERS:
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
    is harmless because the worker's claim is conditional on the job's state.

    One round trip to Redis: RQ's own enqueue sends the queue's registration and the job in two;
    given a pipeline it sends both in one transaction (MULTI/EXEC), so a worker sees the job
    whole, as before."""
    from rq import Queue  # imported here: the client never needs rq

    queue = Queue(queue_name, connection=redis)
    kwargs: dict[str, Any] = {
        "job_id": rq_job_id(job_id, attempt),
        "job_timeout": -1,  # the worker enforces the compile timeout itself, per process group
        "result_ttl": 3600,
        "failure_ttl": 7 * 24 * 3600,
        "description": f"compile job {job_id} attempt {attempt}",
    }
    with redis.pipeline() as pipe:
        queue.enqueue(COMPILE_TASK, job_id, pipeline=pipe, **kwargs)
        pipe.execute()


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
