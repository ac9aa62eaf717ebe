"""What an operator watches, on a stack of its own: a service and a neuronx-cc worker (the test
double) logging JSON (NEFFCACHE_LOG_FORMAT=json), on this run's database, Redis and S3, with
their own queues (so only this worker takes this stack's jobs) and a quota.

- every request is one JSON line with its request id (the caller's X-Request-Id, or a new one,
  answered in the X-Request-Id header), method, path, status, duration and token name;
- a job is followed by its request id from the API through the worker: the service's line of its
  creation and the worker's lines of its claim and publish carry the job id and the request id;
- a real Prometheus (Debian's package) scraping the service finds samples of every metric the
  rules and the dashboard read (tests/support/observability.metrics_used).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import forget_the_runs_redis_keys
from tests.support.api import NEURON_RUNTIME, hlo_model, neuron_spec, upload, wait_job
from tests.support.in_process import forget_workers
from tests.support.observability import PROMETHEUS_BIN, metrics_used
from tests.support.stack import Process, Stack, free_port

# A compiler no worker of the run has (SDK 2.31.0's, with its runtime): its jobs stay queued.
UNSERVED_COMPILER, UNSERVED_RUNTIME = "2.26.6360.0", "2.33.10.0"


@dataclass
class Observed:
    stack: Stack
    api: httpx.Client
    server: Process
    worker: Process

    def lines(self, process: Process) -> list[dict[str, Any]]:
        """The process's JSON log lines (every line it wrote must be one)."""
        text = process.log_path.read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def observed(stack_settings: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    settings = {**stack_settings, "queue_prefix": f"neffcache-obs-{uuid.uuid4().hex[:8]}", "log_format": "json",
                "gc_quota_bytes": "1GiB"}
    stack = Stack(settings, tmp_path_factory.mktemp("observability-logs"))
    try:
        stack.start_server(name="server-json")
        stack.create_admin_token("test-observability-admin")
        worker = stack.start_worker("worker-json", {"worker_backend": "neuronx-cc", "compile_timeout_s": 30,
                                                     "worker_runtime_version": NEURON_RUNTIME})
        with httpx.Client(base_url=stack.url, timeout=60, headers=stack.auth_headers) as api:
            yield Observed(stack, api, stack.processes[0], worker)
    finally:
        stack.stop()
        forget_workers(settings["database_url"], *(p.pid for p in stack.processes))
        forget_the_runs_redis_keys(settings)


def test_a_request_is_one_json_line_with_its_request_id_answered_in_the_header(observed: Observed) -> None:
    given = f"ci-run-{uuid.uuid4().hex[:8]}"
    r = observed.api.get("/v1/stats", headers={"X-Request-Id": given})
    assert r.status_code == 200 and r.headers["x-request-id"] == given
    made = observed.api.get("/v1/stats", headers={"X-Request-Id": "not an id"})  # refused: a new one
    assert made.headers["x-request-id"] != "not an id" and len(made.headers["x-request-id"]) == 32

    lines = {line.get("request_id"): line for line in observed.lines(observed.server) if line.get("event") == "request"}
    for request_id in (given, made.headers["x-request-id"]):
        line = lines[request_id]
        assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/stats", 200)
        assert line["caller"] == "test-observability-admin" and line["duration_ms"] > 0
        assert line["logger"] == "neffcache.service.requests" and line["level"] == "INFO"


def test_a_job_is_followed_by_its_request_id_from_the_api_through_the_worker(observed: Observed) -> None:
    request_id = f"deploy-{uuid.uuid4().hex[:8]}"
    digest = upload(observed.api, hlo_model())
    body = observed.api.post("/v1/compile", json={"spec": neuron_spec(digest)},
                             headers={"X-Request-Id": request_id}).json()
    job_id = body["job"]["id"]
    assert wait_job(observed.api, job_id)["state"] == "succeeded"

    def transitions(process: Process) -> list[tuple[str, str]]:
        return [(line["step"], line["state"]) for line in observed.lines(process)
                if line.get("event") == "job" and line["job_id"] == job_id
                and line["request_id"] == request_id and line["key"] == body["key"]]

    deadline = time.monotonic() + 10  # the worker's line of the publish follows its commit
    while ("publish", "succeeded") not in transitions(observed.worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert transitions(observed.server) == [("create", "queued")]
    assert transitions(observed.worker) == [("claim", "running"), ("publish", "succeeded")]
    worker_lines = [line for line in observed.lines(observed.worker) if line.get("job_id") == job_id]
    assert all(line["request_id"] == request_id for line in worker_lines)
    assert {line["worker"] for line in worker_lines if line.get("event") == "job"} == {
        w["id"] for w in observed.api.get("/v1/workers").json()["workers"] if w["pid"] == observed.worker.pid}


def _prometheus(config_dir: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    config = config_dir / "prometheus.yml"
    config.write_text(json.dumps({  # JSON is YAML
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "neffcache", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [target]}]}],
    }))
    port = free_port()
    log = open(config_dir / "prometheus.log", "ab")
    proc = subprocess.Popen([PROMETHEUS_BIN, f"--config.file={config}", f"--storage.tsdb.path={config_dir / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def test_prometheus_scraping_the_service_has_samples_of_every_metric_the_rules_and_dashboard_read(
        observed: Observed, tmp_path: Path) -> None:
    api = observed.api
    proc, url = _prometheus(tmp_path, observed.stack.url.removeprefix("http://"))
    unserved: httpx.Response | None = None

    def query(expr: str) -> list[dict[str, Any]]:
        assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        try:
            answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=5).json()
        except httpx.HTTPError:  # not listening yet
            return []
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def scraped() -> set[str]:
        """The metrics with samples in the last minute (a worker that is lost now was live then)."""
        return {series["metric"]["__name__"]
                for series in query('count by (__name__) (last_over_time({__name__=~"neffcache_.+"}[1m]))')}

    try:
        # Something of everything: a compile and its hit, a download, a miss, a job no worker serves.
        digest = upload(api, hlo_model())
        spec = neuron_spec(digest)
        first = api.post("/v1/compile", json={"spec": spec}).json()
        assert wait_job(api, first["job"]["id"])["state"] == "succeeded"
        assert api.post("/v1/compile", json={"spec": spec}).json()["status"] == "hit"
        assert api.get(f"/v1/artifacts/{first['key']}/files/model.neff").status_code in (200, 307)
        assert api.post("/v1/lookup", json={"spec": neuron_spec(upload(api, hlo_model()))}).status_code == 404
        unserved = api.post("/v1/compile", json={"spec": neuron_spec(upload(api, hlo_model()), compiler={
            "name": "neuronx-cc", "version": UNSERVED_COMPILER, "flags": []},
            runtime={"name": "neuron-runtime", "version": UNSERVED_RUNTIME})})
        assert unserved.status_code == 202, unserved.text
        deadline = time.monotonic() + 20
        while "neffcache_workers_live" not in scraped() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [s["value"][1] for s in query("up")] == ["1"]  # the service answered its scrapes
        # A worker killed is lost once silent for worker_lost_after_s.
        observed.worker.kill()
        wanted = metrics_used()
        deadline = time.monotonic() + 30
        while wanted - scraped() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert wanted - scraped() == set()
    finally:
        proc.terminate()
        proc.wait(10)
        if unserved is not None and unserved.status_code == 202:
            api.post(f"/v1/jobs/{unserved.json()['job']['id']}/cancel")
