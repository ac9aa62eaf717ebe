"""The lifecycle's one-statement steps and the decisions a process shares (neffcache.lifecycle,
neffcache.dispatch), in process on SQLite migrated by Alembic: a key's first job is inserted by one
statement only when the key has no job and its model is stored, and once under a race; a claim is
one statement that returns the claimed job, even to a session that holds it; a new job's send that
fails takes back the mark its creation made, unless a redelivery marked it since; and a decision
in the making is shared by the requests that come meanwhile, never one already made."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from neffcache import dispatch as dispatch_module
from neffcache import lifecycle
from neffcache.db.models import Blob, Job, utcnow
from neffcache.db.session import Database
from neffcache.dispatch import send_created
from neffcache.lifecycle import JobState, SharedDecisions
from tests.support.in_process import read_job
from tests.unit.neffcache.test_lifecycle import db, manifest, new_job  # noqa: F401 - the module's db fixture

STORED = "sha256:" + "5" * 64


@pytest.fixture(scope="module", autouse=True)
def stored_model(db: Database) -> None:  # noqa: F811
    with db.session() as session:
        session.merge(Blob(digest=STORED, size=1))


def first_job(key: str) -> Job:
    now = utcnow()
    return Job(id=str(uuid.uuid4()), key=key, manifest=manifest(), namespace="default", queue="test:queue",
               attempts=0, max_attempts=2, cancel_requested=False, annotations={"from": "test"}, created_at=now,
               enqueued_at=now)


def jobs_of(db: Database, key: str) -> list[Job]:  # noqa: F811
    with db.session() as session:
        found = list(session.scalars(select(Job).where(Job.key == key)))
        session.expunge_all()
        return found


def test_a_keys_first_job_is_inserted_by_one_statement_as_given(db: Database) -> None:  # noqa: F811
    job = first_job(uuid.uuid4().hex * 2)
    with db.session() as session:
        assert lifecycle.create_for_new_key(session, job, STORED)
        assert job not in session
    stored = read_job(db, job.id)
    assert (stored.state, stored.key, stored.manifest, stored.namespace, stored.annotations) == (
        JobState.QUEUED, job.key, manifest(), "default", {"from": "test"})
    assert (stored.created_at, stored.enqueued_at, stored.attempts, stored.worker_id) == (
        job.created_at, job.enqueued_at, 0, None)


@pytest.mark.parametrize("earlier", list(JobState))
def test_a_key_that_has_a_job_gets_none_from_it(db: Database, earlier: JobState) -> None:  # noqa: F811
    key = uuid.uuid4().hex * 2
    new_job(db, earlier, key=key)
    with db.session() as session:
        assert not lifecycle.create_for_new_key(session, first_job(key), STORED)
    assert len(jobs_of(db, key)) == 1


def test_a_model_not_stored_gets_no_job(db: Database) -> None:  # noqa: F811
    key = uuid.uuid4().hex * 2
    with db.session() as session:
        assert not lifecycle.create_for_new_key(session, first_job(key), "sha256:" + "6" * 64)
    assert jobs_of(db, key) == []


def test_of_requests_racing_for_a_new_key_one_inserts_its_job(db: Database) -> None:  # noqa: F811
    key = uuid.uuid4().hex * 2
    start = threading.Barrier(8)
    inserted: list[bool] = []

    def insert() -> None:
        start.wait()
        with db.session() as session:
            inserted.append(lifecycle.create_for_new_key(session, first_job(key), STORED))

    threads = [threading.Thread(target=insert) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(inserted) == [False] * 7 + [True]
    assert len(jobs_of(db, key)) == 1


def test_a_claim_returns_the_claimed_job_even_to_a_session_that_holds_it(db: Database) -> None:  # noqa: F811
    job_id = new_job(db)
    with db.session() as session:
        held = session.get(Job, job_id)
        claimed = lifecycle.claim(session, job_id, "w1")
        assert claimed is held
        assert (held.state, held.worker_id, held.attempts) == (JobState.RUNNING, "w1", 1)
        assert held.started_at is not None


@pytest.mark.parametrize(("marked_since", "unmarked"), [(False, True), (True, False)])
def test_a_new_jobs_send_that_fails_takes_its_mark_back_unless_marked_since(
        db: Database, monkeypatch: pytest.MonkeyPatch, marked_since: bool, unmarked: bool) -> None:  # noqa: F811
    def down(*_: Any) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(dispatch_module, "enqueue_compile", down)
    job_id = new_job(db)
    marked_at = utcnow() - timedelta(seconds=5)
    with db.session() as session:
        later = utcnow() if marked_since else marked_at  # a redelivery's mark, made since
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=later))
    assert send_created(db, None, "test:queue", job_id, marked_at) is False
    assert (read_job(db, job_id).enqueued_at is None) == unmarked


def test_a_new_jobs_send_keeps_its_mark(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    sent: list[tuple[str, str, int]] = []
    monkeypatch.setattr(dispatch_module, "enqueue_compile", lambda _r, queue, job_id, attempt: sent.append(
        (queue, job_id, attempt)))
    job_id = new_job(db)
    marked_at = utcnow()
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=marked_at))
    assert send_created(db, None, "test:queue", job_id, marked_at) is True
    assert sent == [("test:queue", job_id, 1)] and read_job(db, job_id).enqueued_at == marked_at


# --- shared decisions -----------------------------------------------------------------------------

def test_requests_that_come_while_a_decision_is_made_share_it() -> None:
    decisions: SharedDecisions[object] = SharedDecisions()
    start = threading.Barrier(12)
    made: list[object] = []
    answers: list[tuple[object, bool]] = []

    def decide() -> object:
        time.sleep(0.5)  # long enough that the others come while it is made
        made.append(object())
        return made[-1]

    def request() -> None:
        start.wait()
        answers.append(decisions.share("key", decide))

    threads = [threading.Thread(target=request) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 12 and len(made) < 12
    assert [shared for _, shared in answers].count(False) == len(made)  # each decision answered its maker
    assert {id(decision) for decision, _ in answers} == {id(m) for m in made}


def test_a_decision_already_made_is_not_shared() -> None:
    decisions: SharedDecisions[int] = SharedDecisions()
    calls = iter(range(10))
    assert decisions.share("key", lambda: next(calls)) == (0, False)
    assert decisions.share("key", lambda: next(calls)) == (1, False)
    assert decisions.share("other", lambda: next(calls)) == (2, False)


def test_when_a_shared_decision_fails_each_waiting_request_decides_itself() -> None:
    decisions: SharedDecisions[str] = SharedDecisions()
    deciding = threading.Event()
    release = threading.Event()

    def fail() -> str:
        deciding.set()
        release.wait(10)
        raise RuntimeError("the database went away")

    failed: list[BaseException] = []

    def first() -> None:
        try:
            decisions.share("key", fail)
        except RuntimeError as exc:
            failed.append(exc)

    leader = threading.Thread(target=first)
    leader.start()
    assert deciding.wait(10)
    answers: list[tuple[str, bool]] = []
    followers = [threading.Thread(target=lambda i=i: answers.append(decisions.share("key", lambda: f"own {i}")))
                 for i in range(4)]
    for t in followers:
        t.start()
    time.sleep(0.2)  # let them wait for it (one that comes after it failed decides itself too)
    release.set()
    for t in [leader, *followers]:
        t.join()
    assert len(failed) == 1
    assert sorted(answers) == [(f"own {i}", False) for i in range(4)]
