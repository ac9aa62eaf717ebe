"""README guarantees about a worker that no other test showed on its own, in process on the
fixtures of test_registry.py (SQLite migrated by Alembic, the session's Redis, a folder store):

- a job whose enqueue failed when the service committed it (Redis down at that moment) is
  enqueued by the workers' sweep, once, and compiles once: no job is lost between the database
  and the queue;
- outputs reach the object store before the artifact's row reaches the database, and an attempt
  whose outputs could not all be stored leaves no artifact row: a reader never sees half an
  artifact;
- a worker whose outputs the GC deleted between storing them and its commit (it found them
  stored: a dedupe) stores them again after the commit, so its artifact names no missing object;
- each job's scratch dir is deleted when the job ends, however it ends;
- a job reaches only a worker with exactly the compiler its key names;
- with the default settings, a store that never comes back fails a job after 60 + 120 s of
  retries instead of retrying it forever;
- a worker that cannot reach the database (as one that cannot reach the object store,
  test_registry.py) claims no job until it can.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from neffcache import lifecycle, object_deletion
from neffcache.db.models import Artifact, Job, utcnow
from neffcache.db.session import Database
from neffcache.dispatch import dispatch
from neffcache.errors import StorageError
from neffcache.lifecycle import FailureClass, JobState
from neffcache.queue import connect_redis, queue_for_manifest, queues_for_toolchain
from neffcache.settings import Settings
from neffcache.storage import FilesystemObjectStore
from neffcache.storage.base import PutResult
from neffcache.workers import context as worker_context
from neffcache.workers import jobs, registry, tasks
from neffcache.workers.backends.base import CompileOutcome
from tests.support.in_process import NO_REDIS, read_job
from tests.support.stack import free_port
from tests.unit.neffcache.test_lifecycle import CountingBackend, manifest
from tests.unit.workers.test_registry import (  # noqa: F401 - fixtures
    db,
    listed,
    make_ctx,
    prefix,
    queued_job,
)

Q, S, F = JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED


# --- no job is lost between the database and the queue -----------------------------------------

def test_a_job_whose_enqueue_failed_at_commit_is_enqueued_by_the_sweep_and_compiles_once(
        make_ctx, redis: Any, db: Database) -> None:  # noqa: F811
    backend = CountingBackend()
    ctx = make_ctx(backend=backend)
    queue = ctx.queues[0]
    job_id = queued_job(ctx, with_model=True, enqueue=False)  # committed, as the service commits it
    # ...and then its enqueue met a Redis that did not answer (what the service calls after commit).
    assert dispatch(ctx.db, connect_redis(NO_REDIS), queue, job_id, attempt=1) is False
    assert read_job(db, job_id).enqueued_at is None and listed(redis, queue) == []

    # The sweep gives the service a moment (it may still be sending it), then sends it itself.
    registry.sweep(ctx)
    assert listed(redis, queue) == []
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            created_at=utcnow() - timedelta(seconds=registry.ORPHAN_GRACE_S + 5)))
    registry.sweep(ctx)
    assert listed(redis, queue) == [f"{job_id}_1"]
    assert read_job(db, job_id).enqueued_at is not None
    registry.sweep(ctx)  # marked enqueued now: not sent twice
    assert listed(redis, queue) == [f"{job_id}_1"]

    worker_context.install(ctx)
    registry.rq_worker(ctx).work(burst=True, logging_level="WARNING")
    job = read_job(db, job_id)
    assert (job.state, job.attempts, job.worker_id) == (S, 1, ctx.worker_id), job.message
    assert backend.compiles == 1


# --- outputs first, the artifact row last -------------------------------------------------------

class WatchedStore(FilesystemObjectStore):
    """A folder store that notes, as it stores each object, whether the database already has the
    watched key's artifact row; and fails storing the `fail_at`-th object (1-based) as an S3
    outage would."""

    def __init__(self, root: Path, database: Database, key: str, fail_at: int | None = None) -> None:
        super().__init__(root)
        self.db, self.key, self.fail_at = database, key, fail_at
        self.stored: list[str] = []
        self.row_when_stored: list[bool] = []

    def _publish(self, staged: Path, digest: str) -> None:
        with self.db.session() as session:
            self.row_when_stored.append(session.get(Artifact, self.key) is not None)
        if self.fail_at == len(self.row_when_stored):
            raise StorageError("S3: cannot upload an object: Connection was closed before we received a response")
        super()._publish(staged, digest)
        self.stored.append(digest)


class ScratchRecordingBackend(CountingBackend):
    """CountingBackend that remembers the scratch dir of each compile (the parent of its build dir)."""

    def __init__(self, outcome: str = "ok") -> None:
        super().__init__(outcome)
        self.scratch: list[Path] = []

    def compile(self, manifest: dict[str, Any], model_path: Path, work_dir: Path, timeout_s: float,
                should_cancel: Callable[[], bool]) -> CompileOutcome:
        self.scratch.append(work_dir.parent)
        assert work_dir.parent.is_dir() and model_path.is_file()
        return super().compile(manifest, model_path, work_dir, timeout_s, should_cancel)


def test_outputs_are_stored_before_the_artifact_row_and_half_stored_outputs_publish_nothing(
        make_ctx, db: Database) -> None:  # noqa: F811
    backend = ScratchRecordingBackend()
    ctx = make_ctx(backend=backend)
    job_id = queued_job(ctx, with_model=True, enqueue=False)
    key = read_job(db, job_id).key
    # The log is stored first, then the output: the store fails on the output, half-way.
    store = WatchedStore(Path(ctx.store.root), db, key, fail_at=2)  # type: ignore[attr-defined]
    ctx.store = store
    worker_context.install(ctx)

    assert tasks.run_compile_job(job_id) == "failed: storage_unavailable"
    assert len(store.stored) == 1 and store.row_when_stored == [False, False]
    with db.session() as session:
        assert session.get(Artifact, key) is None  # the stored log alone is no artifact
    job = read_job(db, job_id)
    assert (job.state, job.failure_class, job.attempts) == (Q, "storage_unavailable", 1)

    # Storage answers again; the retry stores its outputs, and only then the row appears.
    store.fail_at = None
    assert registry.check_health(ctx) is None
    assert tasks.run_compile_job(job_id) == "published"
    assert store.row_when_stored and not any(store.row_when_stored)
    with db.session() as session:
        artifact = session.get(Artifact, key)
        assert artifact is not None
        files = [(f.name, f.digest) for f in artifact.files]
    assert {name for name, _ in files} == {"compile.log", "model.pt2"}
    for _, digest in files:
        assert store.stat(digest.split(":", 1)[1]) is not None
    assert (read_job(db, job_id).state, backend.compiles) == (S, 2)


class DeletedUnderTheWorker(FilesystemObjectStore):
    """A folder store where the GC deletes each object just after the worker stored it and
    before its row is committed: the order a deduping writer must survive
    (neffcache/object_deletion.py)."""

    def __init__(self, root: Path, database: Database) -> None:
        super().__init__(root)
        self.db = database
        self.deleted: list[str] = []

    def put_path(self, path: Path, expected_digest: str | None = None) -> PutResult:
        result = super().put_path(path, expected_digest)
        if expected_digest is None:  # the worker's first put, not its repair
            with self.db.session() as session:
                object_deletion.mark(session, [(result.digest, result.size)], "evicted", utcnow())
            assert object_deletion.begin_deletion(self.db, result.digest, utcnow())
            # (an object an earlier test's artifact names is kept, as the GC keeps it)
            if object_deletion.finish_deletion(self.db, self, result.digest):
                self.deleted.append(result.digest)
        return result


def test_outputs_the_gc_deleted_before_the_commit_are_stored_again_after_it(make_ctx, db: Database) -> None:  # noqa: F811
    ctx = make_ctx(backend=CountingBackend())
    job_id = queued_job(ctx, with_model=True, enqueue=False)
    key = read_job(db, job_id).key
    store = DeletedUnderTheWorker(Path(ctx.store.root), db)  # type: ignore[attr-defined]
    ctx.store = store
    worker_context.install(ctx)

    assert tasks.run_compile_job(job_id) == "published"
    with db.session() as session:
        artifact = session.get(Artifact, key)
        assert artifact is not None
        named = sorted(f.digest.removeprefix("sha256:") for f in artifact.files)
    assert store.deleted and set(store.deleted) <= set(named)  # deleted under the worker
    assert all(store.verify(d) is not None and store.verify(d).ok for d in named)  # type: ignore[union-attr]


# --- each job's scratch dir goes when the job ends ----------------------------------------------

def test_each_jobs_scratch_dir_is_deleted_when_it_ends_however_it_ends(make_ctx, db: Database) -> None:  # noqa: F811
    ended: dict[str, str] = {}
    for outcome in ("ok", "compile_error", "oom"):
        backend = ScratchRecordingBackend(outcome)
        ctx = make_ctx(backend=backend)
        worker_context.install(ctx)
        ended[outcome] = tasks.run_compile_job(queued_job(ctx, with_model=True, enqueue=False))
        [scratch] = backend.scratch
        assert scratch.parent == Path(ctx.settings.work_dir or "") and not scratch.exists(), outcome
    assert ended == {"ok": "published", "compile_error": "failed: compile_error", "oom": "failed: oom"}

    # An attempt that ends because storage failed under it cleans up too.
    backend = ScratchRecordingBackend()
    ctx = make_ctx(backend=backend)
    job_id = queued_job(ctx, with_model=True, enqueue=False)
    ctx.store = WatchedStore(Path(ctx.store.root), db, read_job(db, job_id).key, fail_at=1)  # type: ignore[attr-defined]
    worker_context.install(ctx)
    assert tasks.run_compile_job(job_id) == "failed: storage_unavailable"
    [scratch] = backend.scratch
    assert not scratch.exists()
    assert not list(Path(ctx.settings.work_dir or "").glob("neffcache-*"))


# --- one queue per toolchain ------------------------------------------------------------------

def test_a_job_reaches_only_a_worker_with_exactly_the_compiler_its_key_names(
        make_ctx, db: Database, prefix: str) -> None:  # noqa: F811
    def served(name: str, version: str, targets: tuple[str, ...] = ("cpu",),
               isas: tuple[str, ...] = ("x86-64-v3",)) -> list[str]:
        return queues_for_toolchain(prefix, name, version, targets, isas)

    inductor = queue_for_manifest(prefix, manifest("inductor", "9.9.9"))
    assert inductor in served("inductor", "9.9.9")
    for other in (served("inductor", "9.9.8"), served("inductor", "9.9.9", isas=("x86-64-v4",)),
                  served("inductor", "9.9.9", targets=("cuda",), isas=("sm_90",)), served("neuronx-cc", "9.9.9")):
        assert inductor not in other
    neuron = {**manifest(), "target": "trn2", "isa": None,
              "compiler": {"name": "neuronx-cc", "version": "2.27.5334.0+2d6a2ba2b", "flags": []}}
    assert queue_for_manifest(prefix, neuron) in served("neuronx-cc", "2.27.5334.0+2d6a2ba2b")
    assert queue_for_manifest(prefix, neuron) not in served("neuronx-cc", "2.27.5334.0+0badc0de")
    assert queue_for_manifest(prefix, neuron) not in served("neuronx-cc", "2.26.43.0+b3b4b5b6")

    # A job put on this worker's queue by mistake (by hand, say) is refused, not compiled.
    backend = CountingBackend()
    ctx = make_ctx(backend=backend)
    with db.session() as session:
        job, _ = lifecycle.create(session, Job(
            id=str(uuid.uuid4()), key=uuid.uuid4().hex * 2, manifest=manifest("inductor", "9.9.8"),
            queue=ctx.queues[0], attempts=0, max_attempts=2, cancel_requested=False, created_at=utcnow()))
        misrouted = job.id
    worker_context.install(ctx)
    assert tasks.run_compile_job(misrouted) == "this worker has inductor==9.9.9, the job needs inductor==9.9.8"
    assert backend.compiles == 0
    assert read_job(db, misrouted).state != S


# --- a store that never comes back ----------------------------------------------------------------

def test_with_the_defaults_a_store_that_never_comes_back_fails_the_job_after_60_and_120_s_of_retries(
        make_ctx, db: Database) -> None:  # noqa: F811
    defaults = {name: Settings.model_fields[name].default
                for name in ("max_attempts", "storage_retry_backoff_s", "storage_retry_backoff_max_s")}
    assert defaults == {"max_attempts": 3, "storage_retry_backoff_s": 60.0, "storage_retry_backoff_max_s": 900.0}
    ctx = make_ctx()
    ctx.settings = ctx.settings.model_copy(update=defaults)
    job_id = queued_job(ctx, enqueue=False)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(max_attempts=defaults["max_attempts"]))

    waits = []
    for attempt in (1, 2, 3):
        with db.session() as session:
            assert lifecycle.claim(session, job_id, ctx.worker_id) is not None
        step = jobs.record_failure(ctx, job_id, FailureClass.STORAGE_UNAVAILABLE,
                                   "object store unavailable: S3: cannot reach bucket 'b'",
                                   expected_worker=ctx.worker_id)
        job = read_job(db, job_id)
        if attempt < 3:
            assert (step, job.state, job.attempts) == (lifecycle.Step.RETRY, Q, attempt)
            waits.append((job.not_before - utcnow()).total_seconds())
    assert 55 < waits[0] <= 60 and 115 < waits[1] <= 120
    assert (step, job.state, job.failure_class, job.attempts) == (lifecycle.Step.FAIL, F, "storage_unavailable", 3)
    assert "(after 3 attempts)" in job.message, job.message



# --- a worker that cannot reach the database claims nothing ---------------------------------------

def test_a_worker_that_cannot_reach_the_database_claims_nothing_until_it_can(
        make_ctx, db: Database) -> None:  # noqa: F811
    backend = CountingBackend()
    ctx = make_ctx(backend=backend)
    job_id = queued_job(ctx, with_model=True, enqueue=False)
    worker_context.install(ctx)
    ctx.db = Database(f"postgresql://nobody@127.0.0.1:{free_port()}/none")  # nothing listens there
    try:
        problem = registry.check_health(ctx)
        assert problem is not None and problem.startswith("database unavailable: OperationalError"), problem
        assert registry.unavailable(ctx) == problem
        assert tasks.run_compile_job(job_id) == f"not claimed: {problem}"
    finally:
        ctx.db.dispose()
        ctx.db = db
    job = read_job(db, job_id)
    assert (job.state, job.attempts, backend.compiles) == (Q, 0, 0)
    assert registry.check_health(ctx) is None and registry.unavailable(ctx) is None
    assert tasks.run_compile_job(job_id) == "published"
