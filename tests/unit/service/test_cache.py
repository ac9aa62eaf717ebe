"""`force` on a key whose active job is stale (neffcache.service.compile_decisions.submit_compile), in process:
the service on SQLite migrated by Alembic and a real Redis (the session's), through
POST /v1/compile. A forced request reconciles a job that will never finish by itself (queued but
in no queue; running on a lost worker) instead of joining it blindly; a plain request, or a
forced one on a healthy job, joins as before."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from neffcache.db.models import Blob, Job, Worker, utcnow
from neffcache.queue import RQ_QUEUE_KEY, connect_redis, presence
from tests.support.in_process import app_on_redis

LOST_AFTER_S = 60.0


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"neffcache-unit-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, redis_url: str, prefix: str) -> Iterator[TestClient]:
    with app_on_redis(tmp_path_factory.mktemp("cache"), redis_url, prefix, max_attempts=2,
                      worker_lost_after_s=LOST_AFTER_S) as client:
        yield client


@pytest.fixture
def submit(app: TestClient) -> Callable[..., tuple[dict[str, Any], Callable[..., Any]]]:
    """submit() -> (the first answer for a fresh key, post(force) asking for it again)."""
    def make() -> tuple[dict[str, Any], Callable[..., Any]]:
        digest = "sha256:" + uuid.uuid4().hex * 2
        with app.app.state.ctx.db.session() as session:
            session.add(Blob(digest=digest, size=1))
        spec = {"model": {"format": "torch-export", "digest": digest},
                "inputs": [{"name": "x", "shape": [8, 64], "dtype": "float32"}],
                "target": "cpu", "compiler": {"name": "inductor", "version": "9.9.9"}}

        def post(force: bool = False) -> dict[str, Any]:
            r = app.post("/v1/compile", json={"spec": spec, "force": force})
            assert r.status_code == 202, r.text
            return r.json()

        first = post()
        assert first["deduplicated"] is False and first["job"]["state"] == "queued"
        return first, post
    return make


def set_job(app: TestClient, job_id: str, **values: Any) -> None:
    with app.app.state.ctx.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def get_job(app: TestClient, job_id: str) -> Job:
    with app.app.state.ctx.db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def add_worker(app: TestClient, worker_id: str, silent_s: float) -> None:
    with app.app.state.ctx.db.session() as session:
        session.add(Worker(id=worker_id, host="h", pid=1, compiler_name="inductor", compiler_version="9.9.9",
                           runtime_name="torch", runtime_version="9.9.9", toolchain={}, queues=[], state="busy",
                           started_at=utcnow(), last_heartbeat=utcnow() - timedelta(seconds=silent_s)))


def held(redis: Any, job: dict[str, Any], attempt: int) -> bool:
    rq_id = f"{job['id']}_{attempt}"
    return presence(redis, job["queue"], [rq_id])[rq_id].held([])


def lose_from_redis(redis: Any, job: dict[str, Any]) -> None:
    redis.delete(RQ_QUEUE_KEY.format(job["queue"]), f"rq:job:{job['id']}_1")
    assert not held(redis, job, 1)


def test_force_on_a_job_redis_lost_enqueues_it_again(submit, redis: Any, app: TestClient) -> None:
    first, post = submit()
    job = first["job"]
    assert held(redis, job, 1)
    lose_from_redis(redis, job)

    joined = post()  # without force: it joins, as before
    assert joined["job"]["id"] == job["id"] and joined["deduplicated"] is True and "reconciled" not in joined
    assert not held(redis, job, 1)

    forced = post(force=True)
    assert forced["job"]["id"] == job["id"] and forced["deduplicated"] is True
    assert (forced["reconciled"], forced["stale_job"]) == ("not_in_redis", job["id"])
    assert held(redis, job, 1)
    assert get_job(app, job["id"]).attempts == 0

    again = post(force=True)  # it is in Redis now: joined, nothing sent twice
    assert "reconciled" not in again and again["job"]["id"] == job["id"]
    assert redis.lrange(RQ_QUEUE_KEY.format(job["queue"]), 0, -1).count(f"{job['id']}_1".encode()) == 1


def test_force_on_a_job_that_never_reached_redis_enqueues_it(submit, redis: Any, app: TestClient) -> None:
    first, post = submit()
    job = first["job"]
    lose_from_redis(redis, job)
    set_job(app, job["id"], enqueued_at=None)  # the enqueue after commit failed
    forced = post(force=True)
    assert forced["reconciled"] == "not_enqueued" and forced["job"]["id"] == job["id"]
    assert held(redis, job, 1) and get_job(app, job["id"]).enqueued_at is not None


def test_force_hands_back_a_job_running_on_a_lost_worker(submit, redis: Any, app: TestClient) -> None:
    first, post = submit()
    job = first["job"]
    lose_from_redis(redis, job)  # its worker took it off the queue, then died
    add_worker(app, "w-dead", silent_s=LOST_AFTER_S * 10)
    set_job(app, job["id"], state="running", worker_id="w-dead", attempts=1)

    assert post()["job"]["state"] == "running"  # without force: joined
    forced = post(force=True)
    assert forced["reconciled"] == "worker_lost" and forced["deduplicated"] is True
    assert forced["job"]["id"] == job["id"]
    stored = get_job(app, job["id"])
    assert (stored.state, stored.failure_class, stored.worker_id, stored.attempts) == ("queued", "worker_lost", None, 1)
    assert "found by a forced request" in stored.message
    assert held(redis, job, 2) and stored.enqueued_at is not None  # sent at once, backoff or not


def test_force_on_a_lost_workers_job_with_no_attempts_left_makes_a_new_job(submit, app: TestClient) -> None:
    first, post = submit()
    job = first["job"]
    add_worker(app, "w-dead-2", silent_s=LOST_AFTER_S * 10)
    set_job(app, job["id"], state="running", worker_id="w-dead-2", attempts=2)  # max_attempts is 2
    forced = post(force=True)
    assert forced["reconciled"] == "worker_lost" and forced["stale_job"] == job["id"]
    assert forced["deduplicated"] is False and forced["job"]["id"] != job["id"]
    assert (get_job(app, job["id"]).state, get_job(app, job["id"]).failure_class) == ("failed", "worker_lost")


def test_force_joins_a_job_that_is_on_its_way(submit, redis: Any, app: TestClient) -> None:
    first, post = submit()
    job = first["job"]
    forced = post(force=True)  # waiting in Redis
    assert forced["job"]["id"] == job["id"] and "reconciled" not in forced
    assert redis.lrange(RQ_QUEUE_KEY.format(job["queue"]), 0, -1).count(f"{job['id']}_1".encode()) == 1

    add_worker(app, "w-alive", silent_s=0)
    set_job(app, job["id"], state="running", worker_id="w-alive", attempts=1)
    forced = post(force=True)  # running on a live worker
    assert forced["job"]["state"] == "running" and "reconciled" not in forced

    set_job(app, job["id"], state="queued", worker_id=None, enqueued_at=None,
            not_before=utcnow() + timedelta(minutes=5))  # a retry waiting out its backoff
    forced = post(force=True)
    assert "reconciled" not in forced and get_job(app, job["id"]).enqueued_at is None


def test_force_does_not_act_on_a_guess_when_redis_does_not_answer(submit, app: TestClient, redis: Any) -> None:
    first, post = submit()
    job = first["job"]
    lose_from_redis(redis, job)
    ctx = app.app.state.ctx
    real = ctx.__dict__["redis"]
    ctx.__dict__["redis"] = connect_redis("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        forced = post(force=True)
    finally:
        ctx.__dict__["redis"] = real
    assert forced["job"]["id"] == job["id"] and "reconciled" not in forced
