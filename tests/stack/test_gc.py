"""The GC on the running stack: `neffcache-admin gc` and the workers' periodic pass evict by
quota, the API processes stop answering the evicted key at once, a download already handed out
finishes, and the key compiles again and is a hit again. Each test keeps to a namespace of its
own (a namespace quota of 0), so the session's other artifacts are never candidates."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from tests.support.api import hlo_model, neuron_spec, upload, wait_job
from tests.support.cli import client_env, run_cli
from tests.support.in_process import forget_workers


def _compiled(api: httpx.Client, namespace: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(spec, artifact) of a fresh model compiled on the neuronx-cc double in `namespace`."""
    spec = neuron_spec(upload(api, hlo_model()), namespace=namespace)
    body = api.post("/v1/compile", json={"spec": spec}).json()
    assert wait_job(api, body["job"]["id"])["state"] == "succeeded"
    return spec, api.get(f"/v1/artifacts/{body['key']}").json()


def _admin_gc(running: Any, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = running.stack.env({"gc_namespace_quota_bytes": json.dumps({namespace: 0})})
    return subprocess.run([sys.executable, "-m", "neffcache.service.admin", "gc", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _gone(api: httpx.Client, key: str, timeout_s: float = 10) -> None:
    """Until every answer about `key` is a 404 (the API processes heard of the eviction)."""
    deadline = time.monotonic() + timeout_s
    while api.get(f"/v1/artifacts/{key}").status_code != 404:
        assert time.monotonic() < deadline, f"artifact {key} is still served after its eviction"
        time.sleep(0.1)


def test_admin_gc_evicts_over_a_quota_and_the_key_compiles_again(
        api: httpx.Client, running: Any, tokens: dict[str, str], storage_kind: str) -> None:
    namespace = f"gc-{uuid.uuid4().hex[:8]}"
    spec, artifact = _compiled(api, namespace)
    key = artifact["key"]
    neff = next(f for f in artifact["files"] if f["name"] == "model.neff")
    handed_out = api.get(f"/v1/artifacts/{key}/files/model.neff")  # a pod's pull, begun before the GC
    assert api.post("/v1/lookup", json={"spec": spec}).status_code == 200

    dry = _admin_gc(running, namespace, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert [e["key"] for e in json.loads(dry.stdout)["evicted"]] == [key]
    assert api.get(f"/v1/artifacts/{key}").status_code == 200  # a dry run changes nothing

    done = _admin_gc(running, namespace, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [(e["key"], e["reason"]) for e in report["evicted"]] == [(key, "namespace_quota")]
    _gone(api, key)
    missed = api.post("/v1/lookup", json={"spec": spec})
    assert missed.status_code == 404 and missed.json()["key"] == key
    pulled = run_cli(["pull", key, "--dest", str(running.stack.log_dir / f"pull-{key[:8]}")],
                     client_env(running.url, tokens["read"]))
    assert pulled.rc == 4, pulled.stderr

    # What was handed out before the eviction still downloads: the objects wait a grace period.
    if storage_kind == "s3":
        assert handed_out.status_code == 307
        late = httpx.get(handed_out.headers["location"], timeout=30)
        assert hashlib.sha256(late.content).hexdigest() == neff["digest"].removeprefix("sha256:")
    else:
        assert hashlib.sha256(handed_out.content).hexdigest() == neff["digest"].removeprefix("sha256:")

    # The key is not remembered as anything: the next request compiles it again, then hits.
    again = api.post("/v1/compile", json={"spec": spec}).json()
    assert again["status"] == "queued" and again["key"] == key, again
    assert wait_job(api, again["job"]["id"])["state"] == "succeeded"
    assert api.post("/v1/compile", json={"spec": spec}).json()["status"] == "hit"
    republished = api.get(f"/v1/artifacts/{key}/files/model.neff", follow_redirects=True)
    assert hashlib.sha256(republished.content).hexdigest() == neff["digest"].removeprefix("sha256:")


def test_the_workers_periodic_pass_evicts_and_the_stats_say_so(
        api: httpx.Client, running: Any, stack_settings: dict[str, Any], tokens: dict[str, str]) -> None:
    namespace = f"gc-{uuid.uuid4().hex[:8]}"
    _, artifact = _compiled(api, namespace)
    version = "2.26.6360.0+0a1b2c3d4"  # a toolchain only this worker has: it takes no other test's jobs
    keeper = running.stack.start_worker(
        "worker-gc", {"worker_backend": "neuronx-cc", "worker_runtime_version": "2.33.10.0", "gc_interval_s": 1.0,
                      "gc_namespace_quota_bytes": json.dumps({namespace: 0})},
        {"NEURONX_CC_DOUBLE_VERSION": version})
    try:
        _gone(api, artifact["key"], timeout_s=60)
        # The pass goes on after the eviction (sweeps, deletions, its record): until it says so.
        deadline = time.monotonic() + 60
        while "gc: evicted 1 artifacts" not in keeper.log_tail(20000):
            assert time.monotonic() < deadline, keeper.log_tail(4000)
            time.sleep(0.2)
    finally:
        keeper.stop()
        forget_workers(stack_settings["database_url"], keeper.pid)
    shown = run_cli(["stats", "--json"], client_env(running.url, tokens["read"]))
    assert shown.rc == 0, shown.stderr
    last = shown.json()["storage"]["last_gc"]
    assert last is not None and str(keeper.pid) in last["holder"]
