"""The RQ task: one attempt of one compile job, from claim to publish.

Safe to run twice: the claim is a conditional update, so a second delivery of an attempt
that already ran (or of a cancelled job) does nothing.

An attempt that cannot reach the object store or the database fails as `storage_unavailable`
(retried with its own backoff, not as the host's fault), and the worker claims nothing more until
its health check passes (`registry.unavailable`).
"""

from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from neffcache import logs, neff, object_deletion
from neffcache.db.session import DATABASE_UNAVAILABLE
from neffcache.digests import bare_hex, digest_of
from neffcache.errors import CorruptObject, InvalidNeff, NeffcacheError, StorageError
from neffcache.lifecycle import FailureClass, WorkerState
from neffcache.queue import version_matches
from neffcache.workers import context, jobs, registry
from neffcache.workers.backends.base import LOG_FILE, CompileOutcome
from neffcache.workers.context import WorkerContext

log = logging.getLogger(__name__)
CANCEL_POLL_S = 1.0



def run_compile_job(job_id: str) -> str:
    ctx = context.current()
    problem = registry.unavailable(ctx)
    if problem is not None:
        # Taken off the queue just as storage went away: leave the job unclaimed (still queued,
        # attempts unspent); the queue check sends it again, to a worker that can run it.
        return f"not claimed: {problem}"
    with registry.running(ctx, job_id), logs.bound(job=job_id):
        claimed = jobs.claim(ctx, job_id)
        if claimed is None:
            return "skipped: not queued"
        # Every line logged while the job runs carries its id and its request's (neffcache.logs).
        with logs.bound(request=claimed.request_id):
            return _attempt(ctx, claimed)


def _attempt(ctx: WorkerContext, claimed: jobs.ClaimedJob) -> str:
    job_id = claimed.id
    registry.beat(ctx, state=WorkerState.BUSY, current_job=job_id)
    try:
        return _run(ctx, claimed)
    except Exception as exc:
        failure_class, message = attempt_error(exc)
        if failure_class == FailureClass.STORAGE_UNAVAILABLE:
            log.warning("job %s: %s", job_id, message)
            registry.note_unavailable(ctx, message)
        else:
            log.exception("job %s: worker error", job_id)
        jobs.record_failure(ctx, job_id, failure_class, message, expected_worker=ctx.worker_id)
        return f"failed: {failure_class}"
    finally:
        registry.beat(ctx, state=WorkerState.IDLE, clear_job=True)


def attempt_error(exc: Exception) -> tuple[FailureClass, str]:
    """The failure class and message of an exception that ended an attempt: the object store or
    the database not answering is `storage_unavailable`; anything else is the worker's fault."""
    if isinstance(exc, StorageError):
        return FailureClass.STORAGE_UNAVAILABLE, f"object store unavailable: {exc.detail}"
    if isinstance(exc, DATABASE_UNAVAILABLE):
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return FailureClass.STORAGE_UNAVAILABLE, f"database unavailable: {type(exc).__name__}: {reason}"
    return FailureClass.WORKER_LOST, f"worker error: {type(exc).__name__}: {exc}"


def _refusal(ctx: WorkerContext, manifest: dict) -> str | None:
    """Why this host must not build the manifest (a routing mistake), or None."""
    t = ctx.toolchain
    compiler = manifest["compiler"]
    if compiler["name"] != t.compiler_name or not version_matches(compiler["version"], t.compiler_version):
        return (
            f"this worker has {t.compiler_name}=={t.compiler_version}, "
            f"the job needs {compiler['name']}=={compiler['version']}"
        )
    if manifest["target"] not in t.targets:
        return f"this worker builds {', '.join(t.targets)}, not {manifest['target']}"
    return None


def _run(ctx: WorkerContext, job: jobs.ClaimedJob) -> str:
    settings = ctx.settings
    refusal = _refusal(ctx, job.manifest)
    if refusal:
        jobs.record_failure(ctx, job.id, FailureClass.INVALID_INPUT, refusal, expected_worker=ctx.worker_id)
        return refusal
    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix=f"neffcache-{job.id[:8]}-") as tmp:
        work = Path(tmp)
        model_path = work / "input" / "model"
        model_path.parent.mkdir()
        model_hex = bare_hex(job.manifest["model"]["digest"])
        try:
            found = ctx.store.fetch_to_path(model_hex, model_path)
        except CorruptObject as exc:
            # The store's copy is damaged, not the model: never a remembered failure of the model
            # (`invalid_input` would answer every later request for it from memory). The store
            # cannot give the model's bytes: transient, so it is retried (with the storage
            # backoff), and succeeds once the model is uploaded again in between. The copy is
            # moved aside, so that it reads as missing: `neffcache compile` asks whether the blob
            # is stored (HEAD) before uploading, and now uploads it again.
            model = job.manifest["model"]["digest"]
            aside = _quarantine(ctx, model_hex)
            jobs.record_failure(
                ctx, job.id, FailureClass.STORAGE_UNAVAILABLE,
                f"the stored copy of model blob {model} is corrupt (it hashes to sha256:{exc.extra.get('actual')}); "
                f"the model is not at fault. {aside}Upload the model again (`neffcache compile` does, or "
                f"PUT /v1/blobs/{model}) to repair it, then compile again",
                expected_worker=ctx.worker_id)
            return "corrupt input"
        if not found:
            # Recorded as uploaded, yet not in the store (moved aside as corrupt, or deleted):
            # the store's loss, not the model's fault, so not remembered; an upload repairs it.
            model = job.manifest["model"]["digest"]
            jobs.record_failure(ctx, job.id, FailureClass.STORAGE_UNAVAILABLE,
                                f"model blob {model} is missing from the object store (moved aside as corrupt, "
                                f"or deleted); upload the model again (`neffcache compile` does, or "
                                f"PUT /v1/blobs/{model}), then compile again",
                                expected_worker=ctx.worker_id)
            return "missing input"
        build = work / "build"
        build.mkdir()
        should_cancel = _progress_poller(ctx, job.id, build / LOG_FILE)
        outcome = ctx.backend.compile(job.manifest, model_path, build, settings.compile_timeout_s, should_cancel)
        return _finish(ctx, job, outcome)


def _quarantine(ctx: WorkerContext, digest_hex: str) -> str:
    """Move a corrupt stored object aside; says so for the job's message ("" if it could not be)."""
    try:
        where = ctx.store.quarantine(digest_hex)
    except NeffcacheError as exc:  # a store that fails now: the upload's verification repairs it instead
        log.warning("could not move corrupt object sha256:%s aside: %s", digest_hex, exc.detail)
        return ""
    if where is None:
        return ""
    log.warning("moved corrupt object sha256:%s aside to %s", digest_hex, where)
    return "It was moved aside (it reads as missing now). "


def _progress_poller(ctx: WorkerContext, job_id: str, log_path: Path) -> Callable[[], bool]:
    """The `should_cancel` a backend polls several times a second. It asks the database once a
    second whether to stop, and copies the log's progress to the job every `log_refresh_s`,
    so `neffcache logs --follow` shows a compile that runs for hours."""
    polled = {"at": 0.0, "logged_at": 0.0, "stop": False}

    def should_cancel() -> bool:
        now = time.monotonic()
        if now - polled["at"] >= CANCEL_POLL_S:
            progress = None
            if now - polled["logged_at"] >= ctx.settings.log_refresh_s:
                progress, polled["logged_at"] = _log_state(log_path, ctx.settings.log_tail_bytes), now
            polled["at"], polled["stop"] = now, jobs.poll_running(ctx, job_id, progress)
        return bool(polled["stop"])

    return should_cancel


def _neff_summary(path: Path) -> dict:
    with open(path, "rb") as f:
        return neff.validate(f, path.stat().st_size).summary()


def _log_state(path: Path, limit: int, digest: str | None = None) -> jobs.LogState | None:
    """The last `limit` bytes of the log and its size (None before the compiler made it)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - limit))
            return jobs.LogState(f.read().decode("utf-8", errors="replace"), size, digest)
    except FileNotFoundError:
        return None


def _stored_again(ctx: WorkerContext, paths: dict[str, Path]) -> None:
    """After the commit of a row naming these objects (bare hex digest -> the local file): if
    the GC was deleting any of them as this worker found it stored, store it again
    (neffcache.object_deletion)."""
    object_deletion.ensure_stored(ctx.db, ctx.store, {d: functools.partial(ctx.store.put_path, p, d)
                                                      for d, p in paths.items()})


def _finish(ctx: WorkerContext, job: jobs.ClaimedJob, outcome: CompileOutcome) -> str:
    log_put = ctx.store.put_path(outcome.log_path)
    log_digest = digest_of(log_put.digest)
    log = _log_state(outcome.log_path, ctx.settings.log_tail_bytes, log_digest)
    if not outcome.ok:
        jobs.record_failure(ctx, job.id, outcome.failure_class or FailureClass.COMPILE_ERROR, outcome.message,
                            log=log, expected_worker=ctx.worker_id)
        _stored_again(ctx, {log_put.digest: outcome.log_path})
        return f"failed: {outcome.failure_class}"
    try:
        neff_headers = {name: _neff_summary(path) for name, path in outcome.files.items() if name.endswith(".neff")}
    except InvalidNeff as exc:
        # Never publish what a runtime could not load; the same compile would write it again.
        jobs.record_failure(ctx, job.id, FailureClass.INVALID_OUTPUT, f"the compiler wrote an invalid NEFF: {exc}",
                            log=log, expected_worker=ctx.worker_id)
        return f"failed: {FailureClass.INVALID_OUTPUT}"
    files = [jobs.PublishedFile("compile.log", log_digest, log_put.size)]
    stored = {log_put.digest: outcome.log_path}
    for name, path in sorted(outcome.files.items()):
        put = ctx.store.put_path(path)  # digest computed while writing; atomic under its name
        files.append(jobs.PublishedFile(name, digest_of(put.digest), put.size, neff_headers.get(name)))
        stored[put.digest] = path
    assert log is not None  # the backend always writes its log file
    published = jobs.publish(ctx, job, files, log, outcome.seconds,
                             f"compiled in {outcome.seconds:.1f} s on {ctx.worker_id}")
    _stored_again(ctx, stored)
    return "published" if published else "finished elsewhere"
