"""The job lifecycle: states, failure classes, worker states, and every change of a job's state.

    step            from        to          what it is
    create          (no row)    queued      a compile request; or it joins the key's active job
    enqueue         queued      queued      the job reached its Redis queue (enqueued_at)
    claim           queued      running     a worker takes an attempt (attempts + 1)
    skip            queued      succeeded   the key was published meanwhile: nothing to compile
    cancel          queued      cancelled   at once
    heartbeat       running     running     the attempt's log progress, from its worker
    request_cancel  running     running     cancel_requested: its worker stops the compiler
    publish         running     succeeded   in the transaction that writes the artifact row
    fail            running     failed      a remembered failure, or no attempts left
    retry           running     queued      a transient failure with attempts left (not_before)
    stop            running     cancelled   the worker ended an attempt it was asked to cancel

    succeeded, failed and cancelled are final: no step leaves them.

`TRANSITIONS` is that table: each step, the states it may start from and the state it leaves.
Every step but `create` (an INSERT that the one-active-job-per-key index decides) is one
conditional UPDATE, `transition()`:

    UPDATE jobs SET ... WHERE id = ? AND state IN (the step's sources) [AND worker_id = ?]

which says whether it happened. So racing paths change a job once and the loser learns it lost:
two deliveries of one job (one claim wins), a cancel during a publish, a sweep reaping a job that
has just finished (or that another worker has claimed again since).

Who takes which step: the service creates and cancels (a new job is inserted with its
`enqueued_at` already set, and sent to Redis after the commit: nothing is written between the send
and the claim; a send that fails takes the mark back, `dispatch.send_created`); `neffcache.dispatch`
enqueues (and enqueues again a queued job that Redis no longer holds: `redeliver`, an enqueue step
guarded by the `enqueued_at` it was seen with, so concurrent sweeps send it once); a worker claims
(or skips: the claim's UPDATE is also conditional on the key having no artifact),
heartbeats, publishes, and ends a failed attempt (`end_attempt`: fail, retry, or stop); a worker's
sweep reaps the jobs of lost workers (`end_attempt` with `worker_lost`, guarded by the lost
worker's id), and so does a forced compile request that finds its key's job on a lost worker.
States, classes and worker states are str-valued enums: their values are the API and what the
database stores.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future
from datetime import timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import CursorResult, Insert, Table, Update, and_, bindparam, exists, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from neffcache.db import models

T = TypeVar("T")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


# At most one job per key is in an active state (a unique index of the database).
ACTIVE_STATES = (JobState.QUEUED, JobState.RUNNING)
FINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class FailureClass(StrEnum):
    """How an attempt failed (a job's `failure_class`; `cancelled` is only a compile's outcome:
    the job then ends `cancelled`, with no failure class)."""

    COMPILE_ERROR = "compile_error"
    INVALID_INPUT = "invalid_input"
    INVALID_OUTPUT = "invalid_output"
    TIMEOUT = "timeout"
    OOM = "oom"
    WORKER_LOST = "worker_lost"
    # The object store or the database did not answer during the attempt: not the compile's
    # fault. Retried with its own, longer backoff (`storage_retry_backoff_s`, capped).
    STORAGE_UNAVAILABLE = "storage_unavailable"
    CANCELLED = "cancelled"


# The same inputs fail the same way again: the failure is answered from memory until forced.
REMEMBERED_FAILURES = (FailureClass.COMPILE_ERROR, FailureClass.INVALID_INPUT, FailureClass.INVALID_OUTPUT)
# Worth another attempt, with exponential backoff, while attempts remain.
TRANSIENT_FAILURES = (FailureClass.TIMEOUT, FailureClass.OOM, FailureClass.WORKER_LOST,
                      FailureClass.STORAGE_UNAVAILABLE)


class WorkerState(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    STOPPED = "stopped"
    # Alive, but it cannot reach the object store or the database: it claims no job until it can.
    DEGRADED = "degraded"
    # Never stored: what the API shows for a worker not stopped but silent too long.
    LOST = "lost"


def heard_since(seconds: float) -> ColumnElement[bool]:
    """Workers in service: a heartbeat within `seconds`, and not stopped cleanly."""
    worker = models.Worker
    return and_(worker.last_heartbeat >= models.utcnow() - timedelta(seconds=seconds),
                worker.state != WorkerState.STOPPED.value)


class Step(StrEnum):
    CREATE = "create"  # a new job, or join the key's active one
    ENQUEUE = "enqueue"  # it reached its Redis queue (enqueued_at)
    CLAIM = "claim"  # a worker takes the attempt
    SKIP = "skip"  # published meanwhile (a forced job, another host): nothing to compile
    HEARTBEAT = "heartbeat"  # the running attempt's log progress, from its worker
    REQUEST_CANCEL = "request_cancel"  # ask the worker running it to stop
    PUBLISH = "publish"  # the artifact row is written in the same transaction
    FAIL = "fail"  # a remembered failure, or a transient one with no attempts left
    RETRY = "retry"  # a transient failure with attempts left: back to the queue, with a due time
    STOP = "stop"  # the worker ended an attempt that was cancelled
    CANCEL = "cancel"  # a queued job is cancelled at once


_Q, _R = JobState.QUEUED, JobState.RUNNING
# step: (the states it starts from, the state it leaves). No source: a new row.
TRANSITIONS: dict[Step, tuple[tuple[JobState, ...], JobState]] = {
    Step.CREATE: ((), _Q),
    Step.ENQUEUE: ((_Q,), _Q),
    Step.CLAIM: ((_Q,), _R),
    Step.SKIP: ((_Q,), JobState.SUCCEEDED),
    Step.CANCEL: ((_Q,), JobState.CANCELLED),
    Step.HEARTBEAT: ((_R,), _R),
    Step.REQUEST_CANCEL: ((_R,), _R),
    Step.PUBLISH: ((_R,), JobState.SUCCEEDED),
    Step.FAIL: ((_R,), JobState.FAILED),
    Step.RETRY: ((_R,), _Q),
    Step.STOP: ((_R,), JobState.CANCELLED),
}
# Every (from, to) pair some step makes; None is "no row yet". Final states lead nowhere.
ALLOWED: frozenset[tuple[JobState | None, JobState]] = frozenset(
    (source, target) for sources, target in TRANSITIONS.values() for source in (sources or (None,))
)


def transition(session: Session, job_id: str, step: Step, *, worker: str | None = None,
               only_if: ColumnElement[bool] | None = None, **values: Any) -> bool:
    """Take `step` if the job is in one of its source states (and, given `worker`, is that
    worker's; given `only_if`, matches it too): one conditional UPDATE setting `values` and the
    step's state. True if it did."""
    query = _step_update(job_id, step, worker, only_if, values)
    # an UPDATE's result is a CursorResult (Session.execute is typed as returning the base Result)
    result = cast(CursorResult[Any], session.execute(query))
    return result.rowcount == 1


def _step_update(job_id: str, step: Step, worker: str | None, only_if: ColumnElement[bool] | None,
                 values: dict[str, Any]) -> Update:
    """The conditional UPDATE of `transition`."""
    sources, target = TRANSITIONS[step]
    if not sources:
        raise ValueError(f"{step} makes a new job: use create()")
    if "state" in values:
        raise ValueError("the step decides the state")
    query = update(models.Job).where(models.Job.id == job_id, models.Job.state.in_([s.value for s in sources]))
    if worker is not None:
        query = query.where(models.Job.worker_id == worker)
    if only_if is not None:
        query = query.where(only_if)
    if target not in sources:
        values = {**values, "state": target.value}
    return query.values(**values)


def active_job(session: Session, key: str) -> models.Job | None:
    return session.scalar(
        select(models.Job).where(models.Job.key == key, models.Job.state.in_([s.value for s in ACTIVE_STATES]))
    )


def create(session: Session, job: models.Job) -> tuple[models.Job, bool]:
    """Insert `job` (as queued), or join the key's active job that a concurrent request inserted
    first: (the job, whether it is new). The unique index on active jobs per key decides the
    race; the savepoint lets the caller's transaction go on after losing it."""
    job.state = TRANSITIONS[Step.CREATE][1].value
    try:
        with session.begin_nested():
            session.add(job)
        return job, True
    except IntegrityError:
        existing = active_job(session, job.key)
        if existing is None:  # it finished between the two statements: a plain retry
            raise
        return existing, False


def create_for_new_key(session: Session, job: models.Job, model_digest: str) -> bool:
    """Insert `job` (as queued) if its key has no job at all and its model's blob is stored, in
    one statement (INSERT ... SELECT ... WHERE ... ON CONFLICT DO NOTHING): the first request of a
    key reads nothing first. Whether it inserted it; if not (the key has jobs, the blob is not
    stored, or a concurrent request inserted the key's job first: the one-active-job index
    decides, the statement waits for it and inserts nothing), the caller reads what it needs and
    calls `create`. `job` is not added to the session."""
    job.state = TRANSITIONS[Step.CREATE][1].value
    given = tuple(c.key for c in models.Job.__table__.columns if getattr(job, c.key) is not None)
    statement = _insert_for_new_key(session.get_bind().dialect.name, given)
    values = {f"new_{name}": getattr(job, name) for name in given}
    return session.execute(statement, {**values, "model_digest": model_digest}).first() is not None


@functools.cache
def _insert_for_new_key(dialect: str, given: tuple[str, ...]) -> Insert:
    """create_for_new_key's statement, for the columns it is given values of (built once: the
    values are bound when it runs)."""
    table = cast(Table, models.Job.__table__)
    columns = [table.c[name] for name in given]
    row = select(*[bindparam(f"new_{c.key}", type_=c.type) for c in columns]).where(
        exists().where(models.Blob.digest == bindparam("model_digest")),
        ~exists().where(table.c.key == bindparam("new_key", type_=table.c.key.type)))
    # The two databases neffcache runs on; both spell "insert unless the unique index has it" so.
    insert: Callable[[Table], postgresql.Insert | sqlite.Insert] = (
        postgresql.insert if dialect == "postgresql" else sqlite.insert)
    return insert(table).from_select(columns, row).on_conflict_do_nothing(
        index_elements=[table.c.key], index_where=text(models.ACTIVE_JOB_PREDICATE)).returning(table.c.id)


class SharedDecisions(Generic[T]):
    """Create-or-join decisions a process is making, by name (a key): a request whose key's
    decision another thread is making waits for it and answers from it, instead of asking the
    database the same question again, as `create` joins the job a concurrent request inserted
    first (500 identical requests at once make a few decisions, not 500). Only a decision in the
    making is shared, never one already made: an answer is never older than its request by more
    than the time of one decision. If that decision fails, each waiting request makes its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._making: dict[Hashable, Future[T]] = {}

    def share(self, name: Hashable, decide: Callable[[], T]) -> tuple[T, bool]:
        """(the decision, whether another request made it)."""
        with self._lock:
            making = self._making.get(name)
            if making is None:
                mine: Future[T] = Future()
                self._making[name] = mine
        if making is not None:
            try:
                return making.result(), True
            except Exception:  # noqa: BLE001 - whatever failed it, this request asks on its own
                return decide(), False
        try:
            decision = decide()
        except BaseException as exc:
            self._done(name)
            mine.set_exception(exc)
            raise
        self._done(name)
        mine.set_result(decision)
        return decision, False

    def _done(self, name: Hashable) -> None:
        # Before the waiting requests are answered: a request arriving from now on decides anew.
        with self._lock:
            del self._making[name]


def claim(session: Session, job_id: str, worker: str) -> models.Job | None:
    """queued -> running for `worker` (a new attempt), or None when the job is not its to run:
    not queued (claimed by another delivery, cancelled, finished), or already published, which
    finishes it (skip).

    One statement when the job is claimed (the common case, on the path from a compile request
    to its compile's start): the claim's UPDATE is also conditional on the key having no
    artifact, and returns the claimed row. Only when it claims nothing is the job read, to tell
    a published key (skipped here) from a job that is not queued."""
    unpublished = ~exists().where(models.Artifact.key == models.Job.key)
    claimed = session.scalars(_step_update(
        job_id, Step.CLAIM, None, unpublished,
        {"attempts": models.Job.attempts + 1, "worker_id": worker, "started_at": models.utcnow(),
         "finished_at": None,
         # The log is the last attempt's: a retry starts a new one.
         "log_digest": None, "log_tail": None, "log_bytes": 0},
    ).returning(models.Job), execution_options={"synchronize_session": False, "populate_existing": True}).one_or_none()
    if claimed is not None:
        return claimed
    job = session.get(models.Job, job_id)
    if job is not None and job.state == JobState.QUEUED and session.get(models.Artifact, job.key) is not None:
        transition(session, job_id, Step.SKIP, finished_at=models.utcnow(), message="already published")
    return None


def retry_delay(backoff_s: float, attempt: int, cap_s: float | None = None) -> float:
    """Seconds before the retry after failed attempt number `attempt`: doubling each time, up
    to `cap_s` when given."""
    delay = backoff_s * (2 ** max(attempt - 1, 0))
    return delay if cap_s is None else min(delay, cap_s)


def end_attempt(session: Session, job_id: str, failure_class: FailureClass | str, message: str, *,
                retry_backoff_s: float, storage_backoff_s: float | None = None,
                storage_backoff_max_s: float | None = None, worker: str | None = None,
                log: Mapping[str, Any] | None = None) -> Step | None:
    """End a running attempt that did not publish: stop (cancelled), retry (transient, attempts
    left; the sweep enqueues it when due) or fail. A retry waits `retry_delay(retry_backoff_s)`,
    or for `storage_unavailable` `retry_delay(storage_backoff_s, cap storage_backoff_max_s)` (an
    outage of the object store or database lasts longer than a flaky compile host). `worker`,
    when given, is whose attempt it must be (a reap names the lost worker, so a job claimed again
    since is left alone). `log` holds the attempt's log columns; without it the last stored
    progress stays. The step taken, or None when the job was not running (it finished, or someone
    else ended the attempt first)."""
    job = session.get(models.Job, job_id)
    if job is None or job.state != JobState.RUNNING or (worker and job.worker_id != worker):
        return None
    failure_class = FailureClass(failure_class)
    common: dict[str, Any] = {"failure_class": failure_class.value, **(log or {})}
    # Guarded by the worker read above: a reap racing a new claim must not end the new attempt.
    owner = job.worker_id
    if failure_class == FailureClass.CANCELLED or job.cancel_requested:
        step = Step.STOP
        values = {**common, "failure_class": None, "finished_at": models.utcnow(),
                  "message": f"cancelled while running: {message}"}
    elif failure_class in TRANSIENT_FAILURES and job.attempts < job.max_attempts:
        step = Step.RETRY
        if failure_class == FailureClass.STORAGE_UNAVAILABLE:
            base = retry_backoff_s if storage_backoff_s is None else storage_backoff_s
            delay = retry_delay(base, job.attempts, storage_backoff_max_s)
        else:
            delay = retry_delay(retry_backoff_s, job.attempts)
        values = {**common, "enqueued_at": None, "worker_id": None,
                  "not_before": models.utcnow() + timedelta(seconds=delay),
                  "message": f"attempt {job.attempts} of {job.max_attempts} failed ({failure_class}: {message}); "
                             f"retrying in {delay:g} s"}
    else:
        step = Step.FAIL
        values = {**common, "finished_at": models.utcnow(),
                  "message": f"{failure_class}: {message}"
                             + (f" (after {job.attempts} attempts)" if job.attempts > 1 else "")}
    return step if transition(session, job_id, step, worker=owner, **values) else None


def cancel(session: Session, job_id: str) -> Step | None:
    """Cancel a queued job at once (`cancel`), or ask the worker of a running one to stop
    (`request_cancel`). None when the job has already ended."""
    if transition(session, job_id, Step.CANCEL, finished_at=models.utcnow(), message="cancelled while queued"):
        return Step.CANCEL
    if transition(session, job_id, Step.REQUEST_CANCEL, cancel_requested=True):
        return Step.REQUEST_CANCEL
    return None
