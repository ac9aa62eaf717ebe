"""The job state machine (neffcache.lifecycle), in process on SQLite migrated by Alembic:
every allowed and every refused transition, each path's step, and the races (two claims, a
cancel during a publish, a reap of a job that just finished, a job run twice)."""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from neffcache import dispatch as dispatch_module
from neffcache import lifecycle
from neffcache.db.models import Artifact, ArtifactFile, Job, Worker, utcnow
from neffcache.db.session import Database
from neffcache.dispatch import dispatch
from neffcache.lifecycle import (
    ACTIVE_STATES,
    ALLOWED,
    FINAL_STATES,
    REMEMBERED_FAILURES,
    TRANSIENT_FAILURES,
    TRANSITIONS,
    FailureClass,
    JobState,
    Step,
    WorkerState,
    transition,
)
from neffcache.settings import Settings
from neffcache.storage import open_store
from neffcache.workers import context as worker_context
from neffcache.workers import jobs, registry, tasks
from neffcache.workers.backends.base import Backend, CompileOutcome, Toolchain, prepare_work_dir
from neffcache.workers.context import WorkerContext
from tests.support.in_process import migrated_sqlite, read_job

Q, R, S, F, C = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED
BACKOFF_S = 0.5
STORAGE_BACKOFF_S = 7.0


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path_factory.mktemp("lifecycle")))
    yield database
    database.dispose()


def manifest(compiler: str = "inductor", version: str = "9.9.9") -> dict[str, Any]:
    return {
        "key_version": 1,
        "namespace": "default",
        "model": {"format": "torch-export", "digest": "sha256:" + "0" * 64},
        "inputs": [],
        "target": "cpu",
        "isa": "x86-64-v3",
        "compiler": {"name": compiler, "version": version, "flags": []},
        "runtime": {"name": "torch", "version": version},
    }


def new_job(db: Database, state: JobState = Q, *, worker: str | None = None, attempts: int = 0,
            max_attempts: int = 2, cancel_requested: bool = False, key: str | None = None,
            the_manifest: dict[str, Any] | None = None) -> str:
    """A job created as the service creates it, then put in `state` by hand (test setup only)."""
    with db.session() as session:
        job, created = lifecycle.create(session, Job(
            id=str(uuid.uuid4()), key=key or uuid.uuid4().hex * 2, manifest=the_manifest or manifest(),
            queue="test:queue", attempts=0, max_attempts=max_attempts, cancel_requested=False,
            created_at=utcnow(),
        ))
        assert created and job.state == Q
        job_id = job.id
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            state=state.value, worker_id=worker, attempts=attempts, cancel_requested=cancel_requested,
        ))
    return job_id


# The picture in lifecycle's docstring, pair by pair: what may follow what (None: no row yet).
EXPECTED_ALLOWED = {
    (None, Q),
    (Q, Q), (Q, R), (Q, S), (Q, C),
    (R, R), (R, Q), (R, S), (R, F), (R, C),
}


def test_the_transitions_table() -> None:
    assert ALLOWED == EXPECTED_ALLOWED
    assert not {pair for pair in ALLOWED if pair[0] in FINAL_STATES}, "a final state leads nowhere"
    assert set(FINAL_STATES) | set(ACTIVE_STATES) == set(JobState)
    assert {target for _, target in ALLOWED} == set(JobState), "every state is reachable"
    assert set(TRANSITIONS) == set(Step)
    assert set(REMEMBERED_FAILURES).isdisjoint(TRANSIENT_FAILURES)
    assert set(REMEMBERED_FAILURES) | set(TRANSIENT_FAILURES) | {FailureClass.CANCELLED} == set(FailureClass)


def test_values_are_the_api_and_the_database_values() -> None:
    assert [s.value for s in JobState] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert {f.value for f in FailureClass} == {"compile_error", "invalid_input", "invalid_output", "timeout",
                                               "oom", "worker_lost", "storage_unavailable", "cancelled"}
    assert FailureClass.STORAGE_UNAVAILABLE in TRANSIENT_FAILURES
    assert [w.value for w in WorkerState] == ["idle", "busy", "stopped", "degraded", "lost"]
    assert JobState.QUEUED == "queued" and f"{FailureClass.OOM}" == "oom" and str(WorkerState.BUSY) == "busy"


def test_the_schema_index_names_exactly_the_active_states(db: Database) -> None:
    """The one-active-job-per-key index (migrated, so history) must agree with ACTIVE_STATES."""
    with db.session() as session:
        sql = session.execute(text("SELECT sql FROM sqlite_master WHERE name = 'uq_jobs_active_key'")).scalar_one()
    predicate = sql.split("WHERE", 1)[1]
    assert set(re.findall(r"'(\w+)'", predicate)) == {s.value for s in ACTIVE_STATES}


# Each step the conditional UPDATE takes, with values like its path's (enough to be realistic).
STEP_VALUES: dict[Step, Callable[[], dict[str, Any]]] = {
    Step.ENQUEUE: lambda: {"enqueued_at": utcnow()},
    Step.CLAIM: lambda: {"worker_id": "w-claim", "attempts": Job.attempts + 1, "started_at": utcnow()},
    Step.SKIP: lambda: {"finished_at": utcnow(), "message": "already published"},
    Step.CANCEL: lambda: {"finished_at": utcnow(), "message": "cancelled while queued"},
    Step.HEARTBEAT: lambda: {"log_tail": "progress", "log_bytes": 8},
    Step.REQUEST_CANCEL: lambda: {"cancel_requested": True},
    Step.PUBLISH: lambda: {"finished_at": utcnow(), "message": "published"},
    Step.FAIL: lambda: {"finished_at": utcnow(), "failure_class": "compile_error", "message": "x"},
    Step.RETRY: lambda: {"worker_id": None, "failure_class": "timeout", "message": "again"},
    Step.STOP: lambda: {"finished_at": utcnow(), "message": "stopped"},
}


@pytest.mark.parametrize("state", list(JobState))
@pytest.mark.parametrize("step", [s for s in Step if s != Step.CREATE])
def test_every_step_from_every_state(db: Database, step: Step, state: JobState) -> None:
    """Allowed: the row changes and the state is the step's target. Refused: nothing changes."""
    sources, target = TRANSITIONS[step]
    job_id = new_job(db, state, worker="w1" if state == R else None)
    before = read_job(db, job_id)
    with db.session() as session:
        happened = transition(session, job_id, step, **STEP_VALUES[step]())
    after = read_job(db, job_id)
    assert happened == (state in sources)
    if happened:
        assert after.state == target and (state, target) in ALLOWED
    else:
        assert (after.state, after.worker_id, after.message, after.finished_at, after.enqueued_at,
                after.cancel_requested, after.log_tail) == (
                before.state, before.worker_id, before.message, before.finished_at, before.enqueued_at,
                before.cancel_requested, before.log_tail)


@pytest.mark.parametrize("step", [Step.HEARTBEAT, Step.PUBLISH, Step.FAIL, Step.RETRY, Step.STOP])
def test_a_running_jobs_steps_are_its_workers_only(db: Database, step: Step) -> None:
    job_id = new_job(db, R, worker="w1")
    with db.session() as session:
        assert not transition(session, job_id, step, worker="w2", **STEP_VALUES[step]())
    assert read_job(db, job_id).state == R
    with db.session() as session:
        assert transition(session, job_id, step, worker="w1", **STEP_VALUES[step]())
    assert read_job(db, job_id).state == TRANSITIONS[step][1]


def test_transition_refuses_what_is_not_a_step(db: Database) -> None:
    job_id = new_job(db)
    with db.session() as session:
        with pytest.raises(ValueError, match="create"):
            transition(session, job_id, Step.CREATE)
        with pytest.raises(ValueError, match="state"):
            transition(session, job_id, Step.CLAIM, state="succeeded")
        assert not transition(session, "no-such-job", Step.CLAIM)


@pytest.mark.parametrize("first_ends_as", [None, S, F, C])
def test_create_joins_the_active_job_of_its_key(db: Database, first_ends_as: JobState | None) -> None:
    key = uuid.uuid4().hex * 2
    first = new_job(db, key=key)
    if first_ends_as is not None:
        with db.session() as session:
            session.execute(update(Job).where(Job.id == first).values(state=first_ends_as.value))
    with db.session() as session:
        job, created = lifecycle.create(session, Job(
            id=str(uuid.uuid4()), key=key, manifest=manifest(), queue="q", attempts=0, max_attempts=2,
            cancel_requested=False, created_at=utcnow()))
        assert created == (first_ends_as is not None)
        assert (job.id == first) == (first_ends_as is None)
        assert job.state == Q


# --- the paths: claim (or skip), end an attempt (fail, retry, stop), cancel, enqueue ------------

@pytest.mark.parametrize("state", list(JobState))
def test_claim(db: Database, state: JobState) -> None:
    job_id = new_job(db, state, worker="w0" if state == R else None, attempts=1 if state != Q else 0)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(log_tail="old", log_digest="sha256:old"))
    with db.session() as session:
        claimed = lifecycle.claim(session, job_id, "w1")
    job = read_job(db, job_id)
    if state == Q:
        assert claimed is not None and claimed.id == job_id
        assert (job.state, job.worker_id, job.attempts) == (R, "w1", 1)
        assert (job.log_tail, job.log_digest, job.log_bytes) == (None, None, 0)  # a new attempt, a new log
        assert job.started_at is not None and job.finished_at is None
    else:
        assert claimed is None
        assert (job.state, job.log_tail) == (state, "old")


def test_claim_of_a_key_published_meanwhile_skips(db: Database) -> None:
    job_id = new_job(db)
    key = read_job(db, job_id).key
    with db.session() as session:
        session.add(Artifact.from_manifest(key, manifest(), [], compile_seconds=1.0, job_id=None, annotations=None))
    with db.session() as session:
        assert lifecycle.claim(session, job_id, "w1") is None
    job = read_job(db, job_id)
    assert (job.state, job.message, job.attempts, job.worker_id) == (S, "already published", 0, None)
    assert job.finished_at is not None


# failure class, attempts so far, cancel requested -> step, state, failure class, message starts
END_ATTEMPT = [
    (FailureClass.COMPILE_ERROR, 1, False, Step.FAIL, F, "compile_error", "compile_error: boom"),
    (FailureClass.INVALID_INPUT, 1, False, Step.FAIL, F, "invalid_input", "invalid_input: boom"),
    (FailureClass.INVALID_OUTPUT, 1, False, Step.FAIL, F, "invalid_output", "invalid_output: boom"),
    (FailureClass.TIMEOUT, 1, False, Step.RETRY, Q, "timeout",
     "attempt 1 of 2 failed (timeout: boom); retrying in 0.5 s"),
    (FailureClass.OOM, 1, False, Step.RETRY, Q, "oom", "attempt 1 of 2 failed (oom: boom)"),
    (FailureClass.WORKER_LOST, 1, False, Step.RETRY, Q, "worker_lost", "attempt 1 of 2 failed (worker_lost"),
    (FailureClass.TIMEOUT, 2, False, Step.FAIL, F, "timeout", "timeout: boom (after 2 attempts)"),
    (FailureClass.WORKER_LOST, 2, False, Step.FAIL, F, "worker_lost", "worker_lost: boom (after 2 attempts)"),
    (FailureClass.STORAGE_UNAVAILABLE, 1, False, Step.RETRY, Q, "storage_unavailable",
     "attempt 1 of 2 failed (storage_unavailable: boom); retrying in 7 s"),
    (FailureClass.STORAGE_UNAVAILABLE, 2, False, Step.FAIL, F, "storage_unavailable",
     "storage_unavailable: boom (after 2 attempts)"),
    (FailureClass.CANCELLED, 1, False, Step.STOP, C, None, "cancelled while running: boom"),
    (FailureClass.COMPILE_ERROR, 1, True, Step.STOP, C, None, "cancelled while running: boom"),
    (FailureClass.TIMEOUT, 1, True, Step.STOP, C, None, "cancelled while running: boom"),
]


@pytest.mark.parametrize(("failure", "attempts", "cancel_requested", "step", "state", "failure_class", "message"),
                         END_ATTEMPT)
def test_end_attempt(db: Database, failure: FailureClass, attempts: int, cancel_requested: bool, step: Step,
                     state: JobState, failure_class: str | None, message: str) -> None:
    job_id = new_job(db, R, worker="w1", attempts=attempts, cancel_requested=cancel_requested)
    log = {"log_tail": "the end", "log_bytes": 7, "log_digest": "sha256:" + "1" * 64}
    with db.session() as session:
        taken = lifecycle.end_attempt(session, job_id, failure, "boom", retry_backoff_s=BACKOFF_S,
                                      storage_backoff_s=STORAGE_BACKOFF_S, storage_backoff_max_s=60.0,
                                      worker="w1", log=log)
    job = read_job(db, job_id)
    assert taken == step
    assert (job.state, job.failure_class) == (state, failure_class)
    assert job.message.startswith(message), job.message
    assert (job.log_tail, job.log_bytes) == ("the end", 7)
    if step == Step.RETRY:
        assert job.worker_id is None and job.enqueued_at is None and job.finished_at is None
        base = STORAGE_BACKOFF_S if failure == FailureClass.STORAGE_UNAVAILABLE else BACKOFF_S
        delay = lifecycle.retry_delay(base, attempts)
        assert utcnow() < job.not_before <= utcnow() + timedelta(seconds=delay)
    else:
        assert job.finished_at is not None


@pytest.mark.parametrize("state", [Q, S, F, C])
def test_end_attempt_of_a_job_not_running_does_nothing(db: Database, state: JobState) -> None:
    job_id = new_job(db, state)
    with db.session() as session:
        assert lifecycle.end_attempt(session, job_id, FailureClass.TIMEOUT, "late",
                                     retry_backoff_s=BACKOFF_S) is None
    assert (read_job(db, job_id).state, read_job(db, job_id).failure_class) == (state, None)


def test_retry_backoff_doubles() -> None:
    assert [lifecycle.retry_delay(30.0, a) for a in (0, 1, 2, 3)] == [30.0, 30.0, 60.0, 120.0]
    assert [lifecycle.retry_delay(60.0, a, cap_s=100.0) for a in (1, 2, 3)] == [60.0, 100.0, 100.0]


def test_a_guarded_step_happens_only_while_its_guard_holds(db: Database) -> None:
    """The enqueue step of a redelivery is guarded by the enqueued_at it was seen with: of two
    sweeps that saw a job missing from Redis, one marks (and sends) it."""
    job_id = new_job(db)
    seen = utcnow() - timedelta(hours=1)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=seen))
    marks = []
    for _ in range(2):
        with db.session() as session:
            marks.append(transition(session, job_id, Step.ENQUEUE, only_if=Job.enqueued_at <= seen,
                                    enqueued_at=utcnow()))
    assert marks == [True, False]
    assert read_job(db, job_id).enqueued_at > seen


@pytest.mark.parametrize(("state", "step", "after"), [
    (Q, Step.CANCEL, C), (R, Step.REQUEST_CANCEL, R), (S, None, S), (F, None, F), (C, None, C),
])
def test_cancel(db: Database, state: JobState, step: Step | None, after: JobState) -> None:
    job_id = new_job(db, state, worker="w1" if state == R else None)
    with db.session() as session:
        assert lifecycle.cancel(session, job_id) == step
    job = read_job(db, job_id)
    assert job.state == after
    assert job.cancel_requested == (step == Step.REQUEST_CANCEL)
    if step == Step.CANCEL:
        assert job.message == "cancelled while queued" and job.finished_at is not None


@pytest.mark.parametrize(("state", "redis_works", "marked"), [
    (Q, True, True), (Q, False, False), (R, True, False), (C, True, False), (S, True, False),
])
def test_enqueue_marks_only_a_queued_job_that_reached_redis(db: Database, monkeypatch: pytest.MonkeyPatch,
                                                            state: JobState, redis_works: bool, marked: bool) -> None:
    sent: list[tuple[str, str, int]] = []

    def enqueue(redis: Any, queue: str, job_id: str, attempt: int) -> None:
        if not redis_works:
            raise ConnectionError("redis is down")
        sent.append((queue, job_id, attempt))

    monkeypatch.setattr(dispatch_module, "enqueue_compile", enqueue)
    job_id = new_job(db, state)
    assert dispatch(db, None, "test:queue", job_id, attempt=1) == redis_works
    assert sent == ([("test:queue", job_id, 1)] if redis_works else [])
    assert (read_job(db, job_id).enqueued_at is not None) == marked
    assert read_job(db, job_id).state == state


# --- in a worker: heartbeats, publish, races -------------------------------------------------

class CountingBackend(Backend):
    """Writes a log and an output file; counts its compiles; can wait on an event mid-compile."""

    name = "counting"

    def __init__(self, outcome: str = "ok", hold: threading.Event | None = None) -> None:
        self.compiles = 0
        self.outcome = outcome
        self.hold = hold
        self.lock = threading.Lock()

    def detect(self) -> Toolchain:
        raise NotImplementedError

    def compile(self, manifest: dict[str, Any], model_path: Path, work_dir: Path, timeout_s: float,
                should_cancel: Callable[[], bool]) -> CompileOutcome:
        with self.lock:
            self.compiles += 1
        work_dir, log_path = prepare_work_dir(work_dir)
        log_path.write_text("".join(f"compile line {i}\n" for i in range(200)) + "compiled fine\n")
        if self.hold is not None:
            self.hold.wait(10)
        if self.outcome != "ok":
            return CompileOutcome(False, FailureClass(self.outcome), "it broke", {}, log_path, 0.1)
        out = work_dir / "model.pt2"
        out.write_bytes(model_path.read_bytes()[::-1])
        return CompileOutcome(True, None, "ok", {"model.pt2": out}, log_path, 0.1)


@pytest.fixture
def worker_ctx(db: Database, tmp_path: Path) -> Iterator[Callable[..., WorkerContext]]:
    """make(worker_id, backend) -> a WorkerContext on this module's database and a folder store,
    for the toolchain the test jobs name."""
    settings = Settings(database_url=db.url, storage_url=str(tmp_path / "objects"), retry_backoff_s=BACKOFF_S,
                        log_tail_bytes=256, work_dir=str(tmp_path))
    store = open_store(settings)
    toolchain = Toolchain("inductor", "9.9.9", "torch", "9.9.9", ("cpu",), ("x86-64-v3",))
    previous = worker_context._current

    def make(worker_id: str = "w1", backend: Backend | None = None) -> WorkerContext:
        ctx = WorkerContext(settings=settings, db=db, store=store, redis=None, backend=backend or CountingBackend(),
                            toolchain=toolchain, worker_id=worker_id, queues=["test:queue"])
        registry.register(ctx)
        return ctx

    yield make
    worker_context._current = previous


def job_with_model(db: Database, ctx: WorkerContext) -> str:
    model = uuid.uuid4().bytes * 8
    digest = "sha256:" + hashlib.sha256(model).hexdigest()
    path = Path(ctx.settings.work_dir) / f"model-{uuid.uuid4().hex}"
    path.write_bytes(model)
    ctx.store.put_path(path)
    return new_job(db, the_manifest={**manifest(), "model": {"format": "torch-export", "digest": digest}})


def test_heartbeat_stores_progress_for_the_running_worker_only(db: Database, worker_ctx) -> None:
    ctx = worker_ctx("w1")
    job_id = new_job(db, R, worker="w1")
    assert jobs.poll_running(ctx, job_id, jobs.LogState("so far", 6)) is False
    assert (read_job(db, job_id).log_tail, read_job(db, job_id).log_bytes) == ("so far", 6)
    other = worker_ctx("w2")
    assert jobs.poll_running(other, job_id, jobs.LogState("not mine", 8)) is False
    assert read_job(db, job_id).log_tail == "so far"
    with db.session() as session:
        lifecycle.cancel(session, job_id)
    assert jobs.poll_running(ctx, job_id, None) is True  # asked to stop
    assert jobs.poll_running(ctx, new_job(db, C), None) is True


def test_a_succeeded_job_keeps_its_log_tail(db: Database, worker_ctx) -> None:
    ctx = worker_ctx("w1")
    job_id = job_with_model(db, ctx)
    worker_context.install(ctx)
    assert tasks.run_compile_job(job_id) == "published"
    job = read_job(db, job_id)
    assert job.state == S and job.failure_class is None
    assert job.log_digest is not None and job.log_bytes and job.log_bytes > 256
    assert job.log_tail is not None and job.log_tail.endswith("compiled fine\n")
    assert len(job.log_tail.encode()) == 256  # the last log_tail_bytes of it
    from neffcache.service.views import job_view

    assert job_view(job)["log_tail"] == job.log_tail


def test_a_job_run_twice_compiles_and_publishes_once(db: Database, worker_ctx) -> None:
    backend = CountingBackend()
    ctx = worker_ctx("w1", backend)
    job_id = job_with_model(db, ctx)
    worker_context.install(ctx)
    assert tasks.run_compile_job(job_id) == "published"
    finished = read_job(db, job_id)
    assert tasks.run_compile_job(job_id) == "skipped: not queued"  # an RQ redelivery
    assert backend.compiles == 1
    again = read_job(db, job_id)
    assert (again.state, again.attempts, again.finished_at) == (S, 1, finished.finished_at)
    with db.session() as session:
        artifact = session.get(Artifact, finished.key)
        assert artifact is not None and artifact.job_id == job_id
        assert session.query(ArtifactFile).filter_by(artifact_key=finished.key).count() == 2


def test_a_job_delivered_twice_at_once_compiles_once(db: Database, worker_ctx) -> None:
    backend = CountingBackend()
    ctxs = [worker_ctx(f"w{i}", backend) for i in range(2)]
    job_id = job_with_model(db, ctxs[0])
    results: list[str] = []
    start = threading.Barrier(2)

    def deliver(ctx: WorkerContext) -> None:
        start.wait()
        claimed = jobs.claim(ctx, job_id)
        if claimed is None:
            results.append("skipped")
            return
        results.append(tasks._run(ctx, claimed))  # what run_compile_job does after its claim

    threads = [threading.Thread(target=deliver, args=(ctx,)) for ctx in ctxs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["published", "skipped"]
    assert backend.compiles == 1
    assert read_job(db, job_id).attempts == 1


def test_two_claims_of_one_job_one_wins(db: Database) -> None:
    job_id = new_job(db)
    n = 8
    start = threading.Barrier(n)
    won: list[str] = []

    def claim(worker: str) -> None:
        start.wait()
        with db.session() as session:
            if lifecycle.claim(session, job_id, worker) is not None:
                won.append(worker)

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(won) == 1
    job = read_job(db, job_id)
    assert (job.state, job.worker_id, job.attempts) == (R, won[0], 1)


def _publish_in(db: Database, job_id: str, worker: str, inside: Callable[[], None] = lambda: None) -> bool:
    """The publish transaction (artifact row and step), running `inside` before it commits."""
    with db.session() as session:
        key = session.get(Job, job_id).key
        session.add(Artifact.from_manifest(key, manifest(), [], compile_seconds=1.0, job_id=job_id, annotations=None))
        done = transition(session, job_id, Step.PUBLISH, worker=worker, finished_at=utcnow(), message="published")
        inside()
        return done


def test_cancel_during_publish_waits_for_it_and_finds_the_job_ended(db: Database) -> None:
    job_id = new_job(db, R, worker="w1")
    in_publish, answers = threading.Event(), []
    canceller = threading.Thread(target=lambda: (in_publish.wait(10), answers.append(_cancel(db, job_id))))
    canceller.start()

    def hold_the_transaction() -> None:
        in_publish.set()
        time.sleep(0.5)  # the cancel is waiting for this transaction now

    assert _publish_in(db, job_id, "w1", hold_the_transaction)
    canceller.join(30)
    assert answers == [None]  # the route answers 409 job_finished
    job = read_job(db, job_id)
    assert (job.state, job.cancel_requested) == (S, False)


def _cancel(db: Database, job_id: str) -> Step | None:
    with db.session() as session:
        return lifecycle.cancel(session, job_id)


def test_cancel_just_before_publish_is_a_request_the_publish_still_honours_the_compile(db: Database,
                                                                                     worker_ctx) -> None:
    """The request lands first (202): the attempt already compiled, so its publish commits (an
    artifact is never half written) and the job is succeeded, marked as asked to cancel."""
    job_id = new_job(db, R, worker="w1")
    assert _cancel(db, job_id) == Step.REQUEST_CANCEL
    assert _publish_in(db, job_id, "w1")
    job = read_job(db, job_id)
    assert (job.state, job.cancel_requested) == (S, True)
    assert _cancel(db, job_id) is None


def test_cancel_seen_by_the_worker_before_publish_ends_the_job_cancelled(db: Database, worker_ctx) -> None:
    ctx = worker_ctx("w1")
    job_id = new_job(db, R, worker="w1")
    assert _cancel(db, job_id) == Step.REQUEST_CANCEL
    assert jobs.poll_running(ctx, job_id, None) is True
    assert jobs.record_failure(ctx, job_id, FailureClass.CANCELLED, "inductor cancelled after 1.0 s",
                               expected_worker="w1") == Step.STOP
    assert not _publish_in(db, job_id, "w1")  # too late: nothing to finish
    job = read_job(db, job_id)
    assert (job.state, job.failure_class) == (C, None)


def test_reap_of_a_job_that_just_finished_does_nothing(db: Database, worker_ctx) -> None:
    ctx = worker_ctx("sweeper")
    job_id = new_job(db, R, worker="w-gone", attempts=1)
    # The sweep saw it running with a silent worker; then the worker published after all.
    assert _publish_in(db, job_id, "w-gone")
    assert jobs.record_failure(ctx, job_id, FailureClass.WORKER_LOST, "worker w-gone stopped sending heartbeats",
                               expected_worker="w-gone") is None
    job = read_job(db, job_id)
    assert (job.state, job.failure_class, job.message) == (S, None, "published")


def test_reap_of_a_job_claimed_again_since_leaves_the_new_attempt(db: Database, worker_ctx) -> None:
    ctx = worker_ctx("sweeper")
    job_id = new_job(db, R, worker="w-gone", attempts=1)
    # Someone else reaped it first, and another worker claimed the retry.
    assert jobs.record_failure(ctx, job_id, FailureClass.WORKER_LOST, "lost", expected_worker="w-gone") == Step.RETRY
    with db.session() as session:
        assert lifecycle.claim(session, job_id, "w-new") is not None
    assert jobs.record_failure(ctx, job_id, FailureClass.WORKER_LOST, "lost", expected_worker="w-gone") is None
    job = read_job(db, job_id)
    assert (job.state, job.worker_id, job.attempts) == (R, "w-new", 2)


def test_the_sweep_reaps_jobs_of_lost_workers_only(db: Database, worker_ctx) -> None:
    sweeper = worker_ctx("sweeper")
    alive = worker_ctx("w-alive")
    dead = worker_ctx("w-dead")
    with db.session() as session:
        session.execute(update(Worker).where(Worker.id == dead.worker_id)
                        .values(last_heartbeat=utcnow() - timedelta(hours=1)))
    stopped = worker_ctx("w-stopped")
    registry.mark_stopped(stopped)
    jobs_of = {w: new_job(db, R, worker=w, attempts=1) for w in ("w-alive", "w-dead", "w-stopped", "w-unknown")}
    registry.reap_lost_jobs(sweeper)
    states = {w: (read_job(db, j).state, read_job(db, j).failure_class) for w, j in jobs_of.items()}
    assert states == {
        "w-alive": (R, None),
        "w-dead": (Q, "worker_lost"),
        "w-stopped": (Q, "worker_lost"),
        "w-unknown": (Q, "worker_lost"),
    }
    assert alive.worker_id  # kept alive by register()


def test_worker_states_are_stored_as_their_values(db: Database, worker_ctx) -> None:
    ctx = worker_ctx("w-states")
    with db.session() as session:
        assert session.get(Worker, "w-states").state == "idle"
    registry.beat(ctx, state=WorkerState.BUSY, current_job="j")
    with db.session() as session:
        raw = session.execute(text("SELECT state FROM workers WHERE id = 'w-states'")).scalar_one()
        assert raw == "busy" and type(raw) is str
    registry.mark_stopped(ctx)
    with db.session() as session:
        assert session.get(Worker, "w-states").state == "stopped"
        assert "w-states" not in set(session.scalars(select(Worker.id).where(lifecycle.heard_since(60))))


def test_a_failed_attempt_in_the_task_is_remembered_or_retried(db: Database, worker_ctx) -> None:
    for outcome, state in (("compile_error", F), ("invalid_input", F), ("oom", Q)):
        backend = CountingBackend(outcome)
        ctx = worker_ctx("w1", backend)
        job_id = job_with_model(db, ctx)
        worker_context.install(ctx)
        assert tasks.run_compile_job(job_id) == f"failed: {outcome}"
        job = read_job(db, job_id)
        assert (job.state, job.failure_class) == (state, outcome)
        assert job.log_tail and job.log_tail.endswith("compiled fine\n")


def test_a_publish_that_loses_the_artifact_race_keeps_the_first_and_finishes(
        db: Database, worker_ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another attempt inserted the key's artifact between this publish's read and its insert."""
    ctx = worker_ctx("w1")
    job_id = new_job(db, R, worker="w1", attempts=1)
    key = read_job(db, job_id).key
    with db.session() as session:
        session.add(Artifact.from_manifest(key, manifest(), [], compile_seconds=9.0, job_id="the-first",
                                           annotations=None))
    real_get = Session.get

    def get_missing_artifact(self: Session, entity: Any, ident: Any, **kw: Any) -> Any:
        return None if entity is Artifact else real_get(self, entity, ident, **kw)

    monkeypatch.setattr(Session, "get", get_missing_artifact)
    claimed = jobs.ClaimedJob(job_id, key, manifest(), 1)
    assert jobs.publish(ctx, claimed, [], jobs.LogState("tail", 4, "sha256:" + "2" * 64), 1.0, "compiled")
    monkeypatch.undo()
    with db.session() as session:
        assert session.get(Artifact, key).job_id == "the-first"
    assert (read_job(db, job_id).state, read_job(db, job_id).log_tail) == (S, "tail")
