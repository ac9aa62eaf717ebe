"""Liveness, readiness (naming what is down), metrics, and the OpenAPI document."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from neffcache.service.app import create_app
from neffcache.settings import Settings
from tests.support.stack import free_port


def test_healthz_and_readyz(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}


def test_readyz_names_what_does_not_answer(database_url: str, tmp_path: Path) -> None:
    closed = free_port()
    settings = Settings(database_url=database_url, redis_url=f"redis://127.0.0.1:{closed}/0",
                        storage_url=str(tmp_path / "objects"))
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503
    body = r.json()
    assert body["error"] == "not_ready" and "redis" in body["detail"]
    assert body["checks"]["database"] == "ok" and body["checks"]["storage"] == "ok"
    assert body["checks"]["redis"] != "ok"


def test_readyz_reports_a_dead_database(tmp_path: Path, redis_url: str) -> None:
    settings = Settings(database_url=f"postgresql://nobody@127.0.0.1:{free_port()}/none", redis_url=redis_url,
                        storage_url=str(tmp_path / "objects"))
    with TestClient(create_app(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["detail"].startswith("database:")


def test_metrics_exposes_cache_compile_queue_and_worker_series(api: httpx.Client) -> None:
    r = api.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for series in ("neffcache_compile_duration_seconds_bucket", "neffcache_workers_live",
                   "neffcache_compiles_total", "neffcache_jobs_queued"):
        assert series in text, series
    assert 'neffcache_workers_live{compiler="inductor==' in text


def test_cache_request_counter_counts_lookups(api: httpx.Client) -> None:
    spec = {"model": {"format": "hlo", "digest": "sha256:" + "1" * 64},
            "inputs": [{"name": "x", "shape": [1], "dtype": "float32"}], "target": "inf2",
            "compiler": {"name": "neuronx-cc"}, "runtime": {"name": "neuron-runtime", "version": "2.34.10.0"}}
    assert api.post("/v1/lookup", json={"spec": spec}).status_code == 404
    line = 'neffcache_cache_requests_total{kind="lookup",outcome="miss",target="inf2"}'
    assert any(sample.startswith(line) and float(sample.split()[-1]) >= 1
               for sample in api.get("/metrics").text.splitlines())


def test_openapi_documents_the_api(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/v1/compile", "/v1/lookup", "/v1/blobs/{digest}", "/v1/jobs/{job_id}", "/v1/artifacts/{key}",
                 "/v1/artifacts/{key}/files/{name}", "/v1/stats", "/v1/workers", "/readyz"):
        assert path in paths, path
    assert api.get("/docs").status_code == 200
