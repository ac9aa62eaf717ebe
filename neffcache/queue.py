"""Queue names and enqueueing: one RQ queue per toolchain, so a job reaches only a host
that has exactly the compiler its key names.

The service enqueues and the workers listen; both name queues through this module so the
two sides cannot drift. Jobs are enqueued by the dotted path of the task, so the service
never imports the workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from neffcache.toolchain import release_version

COMPILE_TASK = "neffcache.workers.tasks.run_compile_job"
NEURON_FAMILY = "neuron"


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


def enqueue_compile(redis: Any, queue_name: str, job_id: str, attempt: int) -> None:
    """Put one attempt of a job on its queue. The RQ id names the attempt; a duplicate delivery
    is harmless because the worker's claim is conditional on the job's state."""
    from rq import Queue  # imported here: the client never needs rq

    queue = Queue(queue_name, connection=redis)
    kwargs: dict[str, Any] = {
        "job_id": f"{job_id}_{attempt}",  # RQ ids allow letters, digits, "_" and "-"
        "job_timeout": -1,  # the worker enforces the compile timeout itself, per process group
        "result_ttl": 3600,
        "failure_ttl": 7 * 24 * 3600,
        "description": f"compile job {job_id} attempt {attempt}",
    }
    queue.enqueue(COMPILE_TASK, job_id, **kwargs)


def connect_redis(url: str) -> Any:
    from redis import Redis

    return Redis.from_url(url, socket_connect_timeout=5, health_check_interval=30)
