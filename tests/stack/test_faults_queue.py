"""Faults between the database and the queue, on the running stack: a Redis that comes back
without its data loses no job (the database is the source of truth), and a job that reaches
Redis twice compiles once."""

from __future__ import annotations

import time
from typing import Any

import httpx

from neffcache.queue import RQ_QUEUE_KEY, connect_redis, enqueue_compile
from tests.support.api import hlo_model, neuron_spec, upload, wait_job
from tests.support.in_process import forget_workers
from tests.support.rq_keys import delete_run_keys, run_leftovers

# A toolchain only this module's workers have (SDK 2.28.x): its jobs wait until one starts.
VERSION = "2.23.6484.0+c0ffee01"
RUNTIME = "2.30.51.0"


def compiles_of(running: Any, digest: str) -> int:
    """How many times the neuronx-cc double compiled the model with this digest."""
    inputs = running.double_record.with_name(running.double_record.name + ".inputs")
    return inputs.read_text().split().count(digest.split(":")[1]) if inputs.exists() else 0


def start_worker(running: Any, name: str, **overrides: Any) -> Any:
    return running.stack.start_worker(
        name, {"worker_backend": "neuronx-cc", "compile_timeout_s": 60, "worker_runtime_version": RUNTIME,
               **overrides},
        {"NEURONX_CC_DOUBLE_VERSION": VERSION, "NEURONX_CC_DOUBLE_RECORD": str(running.double_record)},
    )


def test_jobs_queued_when_redis_lost_its_data_each_run_exactly_once(
        api: httpx.Client, running: Any, stack_settings: dict[str, Any]) -> None:
    # Four jobs queued while no worker of their toolchain runs: in the database and in Redis.
    spec_of = {}
    jobs = []
    for _ in range(4):
        digest = upload(api, hlo_model("double:sleep=1"))
        spec = neuron_spec(digest, compiler={"name": "neuronx-cc", "version": VERSION, "flags": []},
                           runtime={"name": "neuron-runtime", "version": RUNTIME})
        body = api.post("/v1/compile", json={"spec": spec}).json()
        assert body["status"] == "queued" and body["deduplicated"] is False, body
        jobs.append(body["job"])
        spec_of[body["job"]["id"]] = (spec, digest)
    queue = jobs[0]["queue"]
    redis = connect_redis(stack_settings["redis_url"])
    assert len(redis.lrange(RQ_QUEUE_KEY.format(queue), 0, -1)) == 4

    # Redis restarts empty: every key of this toolchain's queues and jobs is gone (the rest of
    # the shared Redis, the session's, stays).
    toolchain_prefix = queue.rsplit(":", 1)[0]
    assert delete_run_keys(redis, toolchain_prefix) > 0
    assert run_leftovers(redis, toolchain_prefix) == ([], [])
    # ...and one job reaches Redis twice after all (an operator re-enqueued it by hand, say).
    for _ in range(2):
        enqueue_compile(redis, queue, jobs[0]["id"], attempt=1)
    for job in jobs:
        assert api.get(f"/v1/jobs/{job['id']}").json()["state"] == "queued"

    # A forced request for a lost job does not join it blindly: it sends it again itself.
    spec, _ = spec_of[jobs[1]["id"]]
    forced = api.post("/v1/compile", json={"spec": spec, "force": True}).json()
    assert forced["job"]["id"] == jobs[1]["id"] and forced["reconciled"] == "not_in_redis", forced
    assert f"{jobs[1]['id']}_1".encode() in redis.lrange(RQ_QUEUE_KEY.format(queue), 0, -1)

    # The workers come back; their sweep checks the queues every second here (30 s by default).
    worker = start_worker(running, "worker-after-redis-loss", queue_check_interval_s=1.0)
    try:
        for job in jobs:
            done = wait_job(api, job["id"], timeout_s=120)
            assert (done["state"], done["attempts"]) == ("succeeded", 1), done
            assert done["worker"].split("-")[-2] == str(worker.pid)
        time.sleep(3)  # a few more queue checks: nothing is sent, nothing compiles again
        for job in jobs:
            assert compiles_of(running, spec_of[job["id"]][1]) == 1, job["id"]
            again = api.get(f"/v1/jobs/{job['id']}").json()
            assert (again["state"], again["attempts"]) == ("succeeded", 1)
        assert redis.llen(RQ_QUEUE_KEY.format(queue)) == 0
    finally:
        worker.stop()
        forget_workers(stack_settings["database_url"], worker.pid)
        redis.close()
