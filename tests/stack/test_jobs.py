"""Jobs under concurrency and failure: one compile per key, safe redelivery, lost workers, cancel."""

from __future__ import annotations

import signal
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from neffcache.queue import connect_redis, enqueue_compile
from tests.support.api import hlo_model, inductor_spec, neuron_spec, upload, wait_job
from tests.support.in_process import forget_workers
from tests.support.rq_keys import delete_run_keys, run_leftovers


def compiles_of(running, digest: str) -> int:
    """How many times the neuronx-cc double compiled the model with this digest."""
    inputs = running.double_record.with_name(running.double_record.name + ".inputs")
    return inputs.read_text().split().count(digest.split(":")[1]) if inputs.exists() else 0


def test_twenty_concurrent_identical_requests_make_one_job_and_one_compile(api: httpx.Client, running) -> None:
    model = hlo_model("double:sleep=2")
    digest = upload(api, model)
    spec = neuron_spec(digest)

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=running.url, timeout=60, headers=running.stack.auth_headers) as client:
            return client.post("/v1/compile", json={"spec": spec})

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(submit, range(20)))
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses if r.status_code != 202]
    job_ids = {r.json()["job"]["id"] for r in responses}
    assert len(job_ids) == 1
    assert sum(1 for r in responses if not r.json()["deduplicated"]) == 1
    job = wait_job(api, job_ids.pop())
    assert job["state"] == "succeeded" and job["attempts"] == 1
    key = responses[0].json()["key"]
    assert [j["id"] for j in api.get("/v1/jobs?limit=500").json()["jobs"] if j["key"] == key] == [job["id"]]
    assert compiles_of(running, digest) == 1


def test_a_job_delivered_twice_compiles_once(api: httpx.Client, running, stack_settings: dict[str, Any]) -> None:
    digest = upload(api, hlo_model())
    body = api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()
    job = wait_job(api, body["job"]["id"])
    assert job["state"] == "succeeded"
    finished_at = job["finished_at"]
    # RQ redelivers (or an operator re-enqueues) the same job: the worker must not run it again.
    enqueue_compile(connect_redis(stack_settings["redis_url"]), job["queue"], job["id"], attempt=7)
    time.sleep(3)
    again = api.get(f"/v1/jobs/{job['id']}").json()
    assert again["state"] == "succeeded" and again["attempts"] == 1 and again["finished_at"] == finished_at
    assert compiles_of(running, digest) == 1


def test_lost_worker_job_is_retried_on_another_host(api: httpx.Client, running, stack_settings: dict[str, Any]) -> None:
    version = "2.26.6360.0+0a1b2c3d4"  # a toolchain only this test's workers have
    doomed = running.stack.start_worker(
        "worker-doomed",
        {"worker_backend": "neuronx-cc", "compile_timeout_s": 30, "worker_runtime_version": "2.33.10.0"},
        {"NEURONX_CC_DOUBLE_VERSION": version},
    )
    replacement = None
    try:
        digest = upload(api, hlo_model("double:sleep=3"))
        # Two toolchains are live now: a spec that names neither version is ambiguous.
        ambiguous = api.post("/v1/compile", json={"spec": neuron_spec(digest, runtime={"name": "neuron-runtime"})})
        assert ambiguous.status_code == 422 and ambiguous.json()["error"] == "toolchain_ambiguous"
        assert len(ambiguous.json()["candidates"]) == 2

        spec = neuron_spec(digest, compiler={"name": "neuronx-cc", "version": version, "flags": []},
                           runtime={"name": "neuron-runtime", "version": "2.33.10.0"})
        job_id = api.post("/v1/compile", json={"spec": spec}).json()["job"]["id"]
        running_job = wait_job(api, job_id, states=("running",), timeout_s=30)
        assert running_job["worker"].split("-")[-2] == str(doomed.pid)
        doomed.kill()  # the host dies mid-compile

        retried = wait_job(api, job_id, states=("queued",), timeout_s=30, failure_class="worker_lost")
        assert retried["attempts"] == 1 and "retrying" in retried["message"]
        lost = [w for w in api.get("/v1/workers").json()["workers"] if w["pid"] == doomed.pid]
        assert lost[0]["state"] == "lost"

        replacement = running.stack.start_worker(
            "worker-replacement",
            {"worker_backend": "neuronx-cc", "compile_timeout_s": 30, "worker_runtime_version": "2.33.10.0"},
            {"NEURONX_CC_DOUBLE_VERSION": version},
        )
        done = wait_job(api, job_id, timeout_s=60)
        assert done["state"] == "succeeded" and done["attempts"] == 2
        assert done["worker"].split("-")[-2] == str(replacement.pid)
    finally:
        doomed.kill()
        if replacement is not None:
            replacement.stop()
        # Take the dead host's registration out, so later tests see one neuronx-cc toolchain again.
        forget_workers(stack_settings["database_url"], doomed.pid)


def test_cancel_queued_and_running_jobs(api: httpx.Client) -> None:
    digest = upload(api, hlo_model("double:hang"))
    job_id = api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()["job"]["id"]
    wait_job(api, job_id, states=("running",), timeout_s=30)
    r = api.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["cancel_requested"] is True
    job = wait_job(api, job_id, timeout_s=30)
    assert job["state"] == "cancelled"
    again = api.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409 and again.json()["error"] == "job_finished"

    # A job for a toolchain no worker has stays queued; cancelling it is immediate.
    spec = neuron_spec(upload(api, hlo_model()), compiler={"name": "neuronx-cc", "version": "1.0.0.0", "flags": []})
    queued = api.post("/v1/compile", json={"spec": spec}).json()["job"]["id"]
    r = api.post(f"/v1/jobs/{queued}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    listed = api.get("/v1/jobs?state=cancelled&limit=500").json()["jobs"]
    assert {job_id, queued} <= {j["id"] for j in listed}


def test_a_succeeded_job_shows_its_log_tail(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    job = wait_job(api, api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()["job"]["id"])
    assert job["state"] == "succeeded"
    assert job["log_tail"] is not None and job["log_tail"].rstrip().endswith("Compiler status PASS")
    listed = [j for j in api.get("/v1/jobs?state=succeeded&limit=500").json()["jobs"] if j["id"] == job["id"]]
    assert listed[0]["log_tail"] == job["log_tail"]
    log = api.get(f"/v1/jobs/{job['id']}/log")
    assert log.headers["X-Neffcache-Log-Complete"] == "true" and log.text.endswith(job["log_tail"])


def test_an_input_shape_the_program_does_not_take_is_invalid_input_and_remembered(
        api: httpx.Client, tmp_path) -> None:
    from tests.support.models import save_tiny_exported_model

    save_tiny_exported_model(tmp_path / "model.pt2", batch=4, features=16, seed=21)
    digest = upload(api, (tmp_path / "model.pt2").read_bytes())
    spec = inductor_spec(digest, [8, 16])  # the program was exported for [4, 16]
    job = wait_job(api, api.post("/v1/compile", json={"spec": spec}).json()["job"]["id"], timeout_s=300)
    assert job["state"] == "failed" and job["failure_class"] == "invalid_input" and job["attempts"] == 1
    assert "input 'x' (#0): shape [8, 16] in the manifest, [4, 16] in the exported program" in job["message"]
    again = api.post("/v1/compile", json={"spec": spec})
    assert again.status_code == 200 and again.json()["status"] == "failed"
    assert again.json()["job"]["id"] == job["id"]


def test_job_listing_pages_with_a_cursor(api: httpx.Client) -> None:
    first = api.get("/v1/jobs?limit=2").json()
    assert len(first["jobs"]) == 2 and first["next_cursor"]
    second = api.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}").json()
    assert not {j["id"] for j in first["jobs"]} & {j["id"] for j in second["jobs"]}
    assert first["jobs"][-1]["created_at"] >= second["jobs"][0]["created_at"]


def test_a_worker_stopped_mid_compile_gives_its_job_back(api: httpx.Client, running,
                                                          stack_settings: dict[str, Any]) -> None:
    version = "2.25.3371.0+feedface"  # SDK 2.30.0, with runtime 2.32.31.0; only this test's worker has it
    worker = running.stack.start_worker(
        "worker-cold-stop", {"worker_backend": "neuronx-cc", "compile_timeout_s": 120,
                             "worker_runtime_version": "2.32.31.0"},
        {"NEURONX_CC_DOUBLE_VERSION": version},
    )
    try:
        digest = upload(api, hlo_model("double:sleep=60"))
        spec = neuron_spec(digest, compiler={"name": "neuronx-cc", "version": version, "flags": []},
                           runtime={"name": "neuron-runtime", "version": "2.32.31.0"})
        job_id = api.post("/v1/compile", json={"spec": spec}).json()["job"]["id"]
        wait_job(api, job_id, states=("running",), timeout_s=30)
        # Ctrl-C twice: RQ's cold shutdown abandons the job; the worker still says it stopped.
        # (RQ ignores a second signal within a second of the first.)
        worker.popen.send_signal(signal.SIGINT)
        time.sleep(1.5)
        worker.popen.send_signal(signal.SIGINT)
        worker.popen.wait(30)
        states = {w["pid"]: w["state"] for w in api.get("/v1/workers").json()["workers"]}
        assert states[worker.pid] == "stopped"
        retried = wait_job(api, job_id, states=("queued",), timeout_s=30, failure_class="worker_lost")
        assert retried["attempts"] == 1
        assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    finally:
        worker.kill()


def test_a_runs_redis_keys_are_found_by_its_queue_prefix_and_only_its(redis_url: str) -> None:
    """What the session's end deletes (tests/conftest.py): all RQ keys of this run's queues,
    jobs and workers, and none of another run's on the same Redis."""
    redis = connect_redis(redis_url)
    ours, theirs = (f"neffcache-test-{uuid.uuid4().hex[:10]}" for _ in range(2))
    for prefix in (ours, theirs):
        queue = f"{prefix}:neuronx-cc:2.27.5334.0:neuron"
        rq_id = f"{uuid.uuid4()}_1"
        enqueue_compile(redis, queue, rq_id[:-2], attempt=1)  # rq:queue:..., rq:job:..., rq:queues
        redis.xadd(f"rq:results:{rq_id}", {"status": "1"})
        redis.zadd(f"rq:finished:{queue}", {rq_id: 1})
        worker = f"host-{uuid.uuid4().hex[:6]}-abcdef"
        redis.hset(f"rq:worker:{worker}", mapping={"queues": f"{queue},{queue}-v2", "state": "idle"})
        redis.sadd("rq:workers", f"rq:worker:{worker}")
        redis.sadd(f"rq:workers:{queue}", f"rq:worker:{worker}")
    theirs_before = run_leftovers(redis, theirs)
    keys, members = run_leftovers(redis, ours)
    assert {k.split(":")[1] for k in keys} == {"queue", "job", "results", "finished", "worker", "workers"}
    assert len(keys) == 6 and {name for name, _ in members} == {"rq:queues", "rq:workers"}
    assert delete_run_keys(redis, ours) == len(keys) + len(members)
    assert run_leftovers(redis, ours) == ([], [])
    assert run_leftovers(redis, theirs) == theirs_before and len(theirs_before[0]) == 6
    delete_run_keys(redis, theirs)
    assert run_leftovers(redis, theirs) == ([], [])
