"""What a compile request that is not a hit decides (neffcache.service.compile_decisions.submit_compile), in
process: the service on SQLite migrated by Alembic and the session's Redis, through
POST /v1/compile. Identical requests at once make one job that every answer names (the requests a
decision in the making serves share it, each answering with its own spec); a key's first job is
marked enqueued by the transaction that makes it and is in Redis when the answer comes, and one
whose send fails is left to the sweep; a key whose job ended gets a new one, unless it failed in a
way that is remembered."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from neffcache.db.models import Blob, Job
from neffcache.queue import presence
from neffcache.service.app import create_app
from tests.support.in_process import app_on_redis, read_job, service_settings

REQUESTS = 24


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"neffcache-unit-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, redis_url: str, prefix: str) -> Iterator[TestClient]:
    with app_on_redis(tmp_path_factory.mktemp("decisions"), redis_url, prefix) as client:
        yield client


@pytest.fixture
def new_spec(app: TestClient) -> Callable[..., dict[str, Any]]:
    """A spec of a new key whose model is uploaded; `flags` as given (spellings of one key)."""
    def make(flags: list[str] | None = None, digest: str | None = None) -> dict[str, Any]:
        if digest is None:
            digest = "sha256:" + uuid.uuid4().hex * 2
            with app.app.state.ctx.db.session() as session:
                session.add(Blob(digest=digest, size=1))
        return {"model": {"format": "torch-export", "digest": digest},
                "inputs": [{"name": "x", "shape": [8, 64], "dtype": "float32"}],
                "target": "cpu", "compiler": {"name": "inductor", "version": "9.9.9", "flags": flags or []}}
    return make


def post(app: TestClient, spec: dict[str, Any], status: int = 202) -> dict[str, Any]:
    r = app.post("/v1/compile", json={"spec": spec})
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    return body


def set_job(app: TestClient, job_id: str, **values: Any) -> None:
    with app.app.state.ctx.db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def test_identical_requests_at_once_make_one_job_and_each_answer_names_it(
        app: TestClient, new_spec: Callable[..., dict[str, Any]], redis: Any) -> None:
    first = new_spec()
    # Two spellings of one key (the default ISA left out or named): each answer says its own.
    specs = [new_spec(digest=first["model"]["digest"], flags=["cpp.march=x86-64-v3"] * (i % 2))
             for i in range(REQUESTS)]
    with ThreadPoolExecutor(REQUESTS) as pool:
        answers = list(pool.map(lambda spec: post(app, spec), specs))

    assert {a["key"] for a in answers} == {answers[0]["key"]}
    assert len({a["job"]["id"] for a in answers}) == 1
    assert [a["deduplicated"] for a in answers].count(False) == 1
    assert all(a["status"] == "queued" and a["job"]["state"] == "queued" for a in answers)
    assert [a["spec"]["compiler"]["flags"] for a in answers] == [s["compiler"]["flags"] for s in specs]
    job = answers[0]["job"]
    listed = app.get("/v1/jobs", params={"limit": 500}).json()["jobs"]
    assert [j["id"] for j in listed if j["key"] == job["key"]] == [job["id"]]
    rq_id = f"{job['id']}_1"
    assert presence(redis, job["queue"], [rq_id])[rq_id].held([])


def test_a_new_job_is_marked_enqueued_when_it_is_made_and_is_in_redis_before_the_answer(
        app: TestClient, new_spec: Callable[..., dict[str, Any]], redis: Any) -> None:
    job = post(app, new_spec())["job"]
    stored = read_job(app.app.state.ctx.db, job["id"])
    assert stored.enqueued_at is not None and stored.enqueued_at == stored.created_at
    rq_id = f"{job['id']}_1"
    assert presence(redis, job["queue"], [rq_id])[rq_id].held([])


def test_a_new_job_whose_send_fails_is_left_unmarked_for_the_sweep(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = service_settings(tmp_path_factory.mktemp("no-redis"), auth_required=False)  # NO_REDIS
    with TestClient(create_app(settings)) as client:
        digest = "sha256:" + uuid.uuid4().hex * 2
        with client.app.state.ctx.db.session() as session:  # type: ignore[attr-defined]
            session.add(Blob(digest=digest, size=1))
        spec = {"model": {"format": "torch-export", "digest": digest},
                "inputs": [{"name": "x", "shape": [1], "dtype": "float32"}],
                "target": "cpu", "compiler": {"name": "inductor", "version": "9.9.9"}}
        answer = post(client, spec)
        assert answer["deduplicated"] is False and answer["job"]["state"] == "queued"
        stored = read_job(client.app.state.ctx.db, answer["job"]["id"])  # type: ignore[attr-defined]
        assert stored.state == "queued" and stored.enqueued_at is None  # what the sweep sends


def test_a_model_not_uploaded_is_refused_and_makes_no_job(app: TestClient,
                                                          new_spec: Callable[..., dict[str, Any]]) -> None:
    def jobs() -> int:
        return len(app.get("/v1/jobs", params={"limit": 500}).json()["jobs"])

    before = jobs()
    spec = new_spec(digest="sha256:" + uuid.uuid4().hex * 2)  # no blob
    with ThreadPoolExecutor(4) as pool:  # alone, and sharing one decision: each is refused
        refused = list(pool.map(lambda _: app.post("/v1/compile", json={"spec": spec}), range(4)))
    assert [(r.status_code, r.json()["error"]) for r in refused] == [(409, "blob_missing")] * 4
    assert jobs() == before


@pytest.mark.parametrize(("ended_as", "failure_class", "remembered"), [
    ("failed", "compile_error", True),
    ("failed", "invalid_input", True),
    ("failed", "timeout", False),
    ("cancelled", None, False),
    ("succeeded", None, False),  # its artifact gone: compiled again
])
def test_a_key_whose_job_ended_gets_a_new_job_unless_its_failure_is_remembered(
        app: TestClient, new_spec: Callable[..., dict[str, Any]], ended_as: str, failure_class: str | None,
        remembered: bool) -> None:
    spec = new_spec()
    first = post(app, spec)["job"]
    set_job(app, first["id"], state=ended_as, failure_class=failure_class)
    if remembered:
        again = post(app, spec, status=200)
        assert again["status"] == "failed" and again["job"]["id"] == first["id"]
        assert post(app, spec, status=200)["job"]["failure_class"] == failure_class
    else:
        again = post(app, spec)
        assert again["job"]["id"] != first["id"] and again["deduplicated"] is False
        assert post(app, spec)["job"]["id"] == again["job"]["id"]  # and the next request joins it
