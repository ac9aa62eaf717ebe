"""A remembered failure expires (neffcache.service.cache, NEFFCACHE_FAILURE_TTL_S), in process
against the session's database (Postgres when NEFFCACHE_TEST_DATABASE_URL is set) and Redis,
through POST /v1/compile: a compile_error, invalid_input or invalid_output is answered as
`failed` while its job finished less than the TTL ago (None: for ever); after that the next
request makes a new job, as `force` would, and says so. Other failures are never remembered."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from neffcache.db.models import Blob, Job, utcnow
from neffcache.lifecycle import REMEMBERED_FAILURES, TRANSIENT_FAILURES, FailureClass
from tests.support.in_process import app_on_redis

MINUTE, DAY = 60.0, 24 * 3600.0
AGES_S = (MINUTE, 2 * DAY, 30 * DAY)
TTLS_S = (None, DAY, 7 * DAY)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_url: str) -> Iterator[TestClient]:
    prefix = f"neffcache-unit-{uuid.uuid4().hex[:10]}"
    with app_on_redis(tmp_path_factory.mktemp("failure-ttl"), redis_url, prefix, database_url=database_url) as client:
        yield client


@pytest.fixture
def failed(app: TestClient, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[str, Callable[..., Any]]]:
    """failed(failure_class, age_s, ttl_s) -> (the id of a fresh key's job, failed with that class
    `age_s` ago, and post(force) asking for the key again with the TTL set to `ttl_s`)."""
    ctx = app.app.state.ctx

    def make(failure_class: FailureClass, age_s: float, ttl_s: float | None) -> tuple[str, Callable[..., Any]]:
        monkeypatch.setattr(ctx.settings, "failure_ttl_s", ttl_s)
        digest = "sha256:" + uuid.uuid4().hex * 2
        with ctx.db.session() as session:
            session.add(Blob(digest=digest, size=1))
        spec = {"model": {"format": "torch-export", "digest": digest},
                "inputs": [{"name": "x", "shape": [8, 64], "dtype": "float32"}],
                "target": "cpu", "compiler": {"name": "inductor", "version": "9.9.9"}}

        def post(force: bool = False) -> dict[str, Any]:
            r = app.post("/v1/compile", json={"spec": spec, "force": force})
            assert r.status_code in (200, 202), r.text
            return r.json()

        job_id = post()["job"]["id"]
        finished = utcnow() - timedelta(seconds=age_s)
        with ctx.db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                state="failed", failure_class=failure_class, attempts=1, message="it failed",
                started_at=finished - timedelta(seconds=5), finished_at=finished))
        return job_id, post
    return make


REMEMBERED_CASES = [
    pytest.param(failure, age, ttl, ttl is None or age < ttl, id=f"{failure}-age{age:.0f}s-ttl{ttl}")
    for failure, age, ttl in itertools.product(REMEMBERED_FAILURES, AGES_S, TTLS_S)
]


@pytest.mark.parametrize("failure, age_s, ttl_s, remembered", REMEMBERED_CASES)
def test_a_remembered_failure_is_answered_until_its_ttl_then_compiled_again(
        failed, failure: FailureClass, age_s: float, ttl_s: float | None, remembered: bool) -> None:
    job_id, post = failed(failure, age_s, ttl_s)
    answer = post()
    if remembered:
        assert answer["status"] == "failed" and answer["job"]["id"] == job_id, answer
        assert answer["job"]["failure_class"] == failure and "retried_after_ttl" not in answer
        return
    assert answer["status"] == "queued" and answer["deduplicated"] is False, answer
    assert (answer["retried_after_ttl"], answer["failed_job"]) == (True, job_id)
    assert answer["job"]["id"] != job_id and answer["job"]["state"] == "queued"
    again = post()  # the retry is the key's job now: joined, not made again
    assert again["job"]["id"] == answer["job"]["id"] and again["deduplicated"] is True
    assert "retried_after_ttl" not in again


@pytest.mark.parametrize("failure", TRANSIENT_FAILURES)
def test_a_failure_that_is_not_remembered_makes_a_new_job_whatever_the_ttl(failed, failure: FailureClass) -> None:
    job_id, post = failed(failure, MINUTE, None)
    answer = post()
    assert answer["status"] == "queued" and answer["job"]["id"] != job_id and "retried_after_ttl" not in answer


def test_force_retries_a_failure_within_its_ttl_and_says_nothing_of_the_ttl(failed) -> None:
    job_id, post = failed(FailureClass.COMPILE_ERROR, MINUTE, DAY)
    assert post()["status"] == "failed"
    forced = post(force=True)
    assert forced["status"] == "queued" and forced["job"]["id"] != job_id and "retried_after_ttl" not in forced
