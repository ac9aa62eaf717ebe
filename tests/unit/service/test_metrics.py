"""The metrics the alerts and the dashboard read that no other test shows (service.metrics), in
process on SQLite made by the migrations: how long each queue's oldest due job has waited, how
many live workers serve each queue (0 for a queue with jobs and none), workers lost, whether the
scrape could read the database, compile seconds saved, download bytes, and answers by status."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from neffcache.db.models import Artifact, Job, Worker, utcnow
from neffcache.lifecycle import JobState, WorkerState
from neffcache.service import cache
from neffcache.service.app import create_app
from neffcache.service.context import ServiceContext
from tests.support.api import SAMPLE_MANIFEST
from tests.support.in_process import service_settings

SERVED, UNSERVED = "nc:inductor:9.9.9:cpu:x86-64-v3", "nc:neuronx-cc:2.26.6360.0:neuron"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings(tmp_path, auth_required=False, worker_lost_after_s=60.0))) as c:
        yield c


def ctx_of(client: TestClient) -> ServiceContext:
    ctx: ServiceContext = client.app.state.ctx  # type: ignore[attr-defined]
    return ctx


def sample(client: TestClient, name: str, **labels: str) -> float | None:
    client.get("/metrics")
    value: float | None = ctx_of(client).metrics.registry.get_sample_value(name, labels)
    return value


def add_job(client: TestClient, queue: str, created_ago_s: float, **values: Any) -> None:
    with ctx_of(client).db.session() as session:
        session.add(Job(id=str(uuid.uuid4()), key=uuid.uuid4().hex * 2, manifest=SAMPLE_MANIFEST, queue=queue,
                        state=JobState.QUEUED.value, attempts=0, max_attempts=3, cancel_requested=False,
                        created_at=utcnow() - timedelta(seconds=created_ago_s), **values))


def add_worker(client: TestClient, queues: list[str], heard_ago_s: float, state: WorkerState = WorkerState.IDLE,
               version: str = "9.9.9") -> None:
    with ctx_of(client).db.session() as session:
        session.add(Worker(id=f"w-{uuid.uuid4().hex[:8]}", host="h", pid=1, compiler_name="inductor",
                           compiler_version=version, runtime_name="torch", runtime_version="9.9.9", toolchain={},
                           queues=queues, state=state.value, last_heartbeat=utcnow() - timedelta(seconds=heard_ago_s)))


def test_each_queue_says_how_long_its_oldest_due_job_has_waited_and_who_serves_it(client: TestClient) -> None:
    add_job(client, SERVED, 300)
    add_job(client, SERVED, 30)
    add_job(client, UNSERVED, 1000)
    # A retry waiting out its backoff is not due: it does not count, nor does its age before it.
    add_job(client, UNSERVED, 5000, not_before=utcnow() + timedelta(seconds=600))
    add_worker(client, [SERVED], heard_ago_s=1)
    add_worker(client, [SERVED], heard_ago_s=1, state=WorkerState.STOPPED)

    served_age = sample(client, "neffcache_jobs_queued_oldest_age_seconds", queue=SERVED)
    unserved_age = sample(client, "neffcache_jobs_queued_oldest_age_seconds", queue=UNSERVED)
    assert served_age is not None and 300 <= served_age < 360
    assert unserved_age is not None and 1000 <= unserved_age < 1060
    assert sample(client, "neffcache_queue_workers_live", queue=SERVED) == 1
    assert sample(client, "neffcache_queue_workers_live", queue=UNSERVED) == 0
    assert sample(client, "neffcache_jobs_queued", queue=UNSERVED) == 2


def test_workers_silent_past_the_lost_window_and_not_stopped_are_lost(client: TestClient) -> None:
    add_worker(client, [SERVED], heard_ago_s=600, version="1.0")
    add_worker(client, [SERVED], heard_ago_s=600, version="1.0")
    add_worker(client, [SERVED], heard_ago_s=600, version="1.0", state=WorkerState.STOPPED)  # stopped cleanly
    add_worker(client, [SERVED], heard_ago_s=1, version="1.0")
    assert sample(client, "neffcache_workers_lost", compiler="inductor==1.0") == 2
    assert sample(client, "neffcache_workers_live", compiler="inductor==1.0") == 1


def test_a_scrape_that_cannot_read_the_database_says_so(tmp_path: Path) -> None:
    broken = service_settings(tmp_path, database_url=f"sqlite:///{tmp_path}/missing/none.db")
    with TestClient(create_app(broken)) as client:
        text = client.get("/metrics").text
    assert "neffcache_database_up 0.0" in text.splitlines()
    assert "neffcache_jobs_queued" not in text  # nothing half read


def test_the_database_is_up_in_a_scrape_that_read_it(client: TestClient) -> None:
    assert sample(client, "neffcache_database_up") == 1


def test_hits_count_the_seconds_they_saved_and_downloads_their_bytes(client: TestClient) -> None:
    metrics = ctx_of(client).metrics
    artifact = Artifact(key="k" * 64, manifest=SAMPLE_MANIFEST, namespace="default", model_digest="d", target="trn1",
                        compiler_name="neuronx-cc", compiler_version="v", runtime_version="r", compile_seconds=42.5)
    for kind in ("lookup", "compile"):
        cache.record(ctx_of(client), kind, SAMPLE_MANIFEST, artifact.key, artifact, "ci")
    cache.record(ctx_of(client), "lookup", SAMPLE_MANIFEST, artifact.key, None, "ci")  # a miss saves nothing
    cache.record_download(ctx_of(client), artifact, "pod", 1000)  # a download is not a compile saved
    assert metrics.registry.get_sample_value("neffcache_compile_seconds_saved_total", {"target": "trn1"}) == 85.0
    assert metrics.registry.get_sample_value("neffcache_download_bytes_total", {"target": "trn1"}) == 1000


def test_answers_are_counted_by_status_and_the_error_statuses_start_at_zero(client: TestClient) -> None:
    assert sample(client, "neffcache_responses_total", status="503") == 0
    assert sample(client, "neffcache_corrupt_objects_total", found_by="artifact_file") == 0
    client.get("/v1/jobs/" + "0" * 8)  # no such job
    assert sample(client, "neffcache_responses_total", status="404") == 1
    assert (sample(client, "neffcache_responses_total", status="200") or 0) >= 2  # the /metrics answers


def test_the_counts_from_the_database_never_go_down_when_the_gc_deletes_what_they_count(client: TestClient) -> None:
    """The GC deletes old jobs and evicts artifacts; neffcache_compiles_total and the
    compile-duration histogram add back what it deleted (neffcache.retired), so neither falls
    (a falling counter reads as a restart to Prometheus, and rate() jumps)."""
    from neffcache import gc
    from tests.support.cache_contents import DAY, Cache

    ctx = ctx_of(client)
    long_ago = utcnow() - 200 * DAY
    with ctx.db.session() as session:
        for failure in ("compile_error", "compile_error", "oom"):
            session.add(Job(id=str(uuid.uuid4()), key=uuid.uuid4().hex * 2, manifest=SAMPLE_MANIFEST, queue=SERVED,
                            state=JobState.FAILED.value, failure_class=failure, attempts=1, max_attempts=3,
                            cancel_requested=False, created_at=long_ago, finished_at=long_ago))
    contents = Cache(ctx.db, ctx.store)
    evicted = contents.artifact(used=utcnow() - 3 * DAY)
    kept = contents.artifact(used=utcnow())
    with ctx.db.session() as session:
        for key, seconds in ((evicted, 700.0), (kept, 20.0)):
            row = session.get(Artifact, key)
            assert row is not None
            row.compile_seconds = seconds

    def counts() -> tuple[float | None, ...]:
        return (sample(client, "neffcache_compiles_total", result="failed", failure_class="compile_error"),
                sample(client, "neffcache_compiles_total", result="failed", failure_class="oom"),
                sample(client, "neffcache_compile_duration_seconds_count"),
                sample(client, "neffcache_compile_duration_seconds_sum"),
                sample(client, "neffcache_compile_duration_seconds_bucket", le="1800.0"),
                sample(client, "neffcache_compile_duration_seconds_bucket", le="600.0"))

    before = counts()
    assert before == (2, 1, 2, 720.0, 2, 1)
    report = gc.run_gc(ctx.db, ctx.store, ctx.settings.model_copy(update={"gc_quota_bytes": 200}), holder="test")
    assert [e.key for e in report.evicted] == [evicted] and report.jobs == 3
    assert counts() == before
