"""The RQ task: one attempt of one compile job, from claim to publish.

Safe to run twice: the claim is a conditional update, so a second delivery of an attempt
that already ran (or of a cancelled job) does nothing.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from neffcache import neff
from neffcache.db.models import INVALID_INPUT, INVALID_OUTPUT, WORKER_LOST
from neffcache.errors import CorruptObject
from neffcache.neff import InvalidNeff
from neffcache.queue import version_matches
from workers import context, jobs, registry
from workers.backends.base import CompileOutcome
from workers.context import WorkerContext

log = logging.getLogger(__name__)
CANCEL_POLL_S = 1.0


def run_compile_job(job_id: str) -> str:
    ctx = context.current()
    claimed = jobs.claim(ctx, job_id)
    if claimed is None:
        return "skipped: not queued"
    registry.beat(ctx, state="busy", current_job=job_id)
    try:
        return _run(ctx, claimed)
    except Exception as exc:  # noqa: BLE001 - whatever broke here, the job must not stay `running`
        log.exception("job %s: worker error", job_id)
        jobs.record_failure(ctx, job_id, WORKER_LOST, f"worker error: {type(exc).__name__}: {exc}",
                                  expected_worker=ctx.worker_id)
        return "worker error"
    finally:
        registry.beat(ctx, state="idle", clear_job=True)


def _refusal(ctx: WorkerContext, manifest: dict) -> str | None:
    """Why this host must not build the manifest (a routing mistake), or None."""
    t = ctx.toolchain
    compiler = manifest["compiler"]
    if compiler["name"] != t.compiler_name or not version_matches(compiler["version"], t.compiler_version):
        return f"this worker has {t.compiler_name}=={t.compiler_version}, the job needs {compiler['name']}=={compiler['version']}"
    if manifest["target"] not in t.targets:
        return f"this worker builds {', '.join(t.targets)}, not {manifest['target']}"
    return None


def _run(ctx: WorkerContext, job: jobs.ClaimedJob) -> str:
    settings = ctx.settings
    refusal = _refusal(ctx, job.manifest)
    if refusal:
        jobs.record_failure(ctx, job.id, INVALID_INPUT, refusal, expected_worker=ctx.worker_id)
        return refusal
    last_poll = [0.0, False]

    def should_cancel() -> bool:
        # The compiler's wait loop asks often; the database is asked once a second.
        if time.monotonic() - last_poll[0] >= CANCEL_POLL_S:
            last_poll[0], last_poll[1] = time.monotonic(), jobs.cancel_requested(ctx, job.id)
        return bool(last_poll[1])

    with tempfile.TemporaryDirectory(dir=settings.work_dir, prefix=f"neffcache-{job.id[:8]}-") as tmp:
        work = Path(tmp)
        model_path = work / "input" / "model"
        model_path.parent.mkdir()
        model_hex = job.manifest["model"]["digest"].split(":", 1)[1]
        try:
            found = ctx.store.fetch_to_path(model_hex, model_path)
        except CorruptObject as exc:
            jobs.record_failure(ctx, job.id, INVALID_INPUT, f"model blob is corrupt: {exc.detail}",
                                      expected_worker=ctx.worker_id)
            return "corrupt input"
        if not found:
            jobs.record_failure(ctx, job.id, INVALID_INPUT,
                                      f"model blob {job.manifest['model']['digest']} is missing from the object store",
                                      expected_worker=ctx.worker_id)
            return "missing input"
        build = work / "build"
        build.mkdir()
        outcome = ctx.backend.compile(job.manifest, model_path, build, settings.compile_timeout_s, should_cancel)
        return _finish(ctx, job, outcome)


def _neff_summary(path: Path) -> dict:
    with open(path, "rb") as f:
        return neff.validate(f, path.stat().st_size).summary()


def _log_tail(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - limit))
        return f.read().decode("utf-8", errors="replace")


def _finish(ctx: WorkerContext, job: jobs.ClaimedJob, outcome: CompileOutcome) -> str:
    log_put = ctx.store.put_path(outcome.log_path)
    log_digest = f"sha256:{log_put.digest}"
    if not outcome.ok:
        jobs.record_failure(
            ctx, job.id, outcome.failure_class or "compile_error", outcome.message,
            log_tail=_log_tail(outcome.log_path, ctx.settings.log_tail_bytes), log_digest=log_digest,
            expected_worker=ctx.worker_id,
        )
        return f"failed: {outcome.failure_class}"
    try:
        neff_headers = {name: _neff_summary(path) for name, path in outcome.files.items() if name.endswith(".neff")}
    except InvalidNeff as exc:
        # Never publish what a runtime could not load; the same compile would write it again.
        jobs.record_failure(ctx, job.id, INVALID_OUTPUT, f"the compiler wrote an invalid NEFF: {exc}",
                            log_tail=_log_tail(outcome.log_path, ctx.settings.log_tail_bytes),
                            log_digest=log_digest, expected_worker=ctx.worker_id)
        return "failed: invalid_output"
    files = [jobs.PublishedFile("compile.log", log_digest, log_put.size)]
    for name, path in sorted(outcome.files.items()):
        put = ctx.store.put_path(path)  # digest computed while writing; atomic under its name
        files.append(jobs.PublishedFile(name, f"sha256:{put.digest}", put.size, neff_headers.get(name)))
    published = jobs.publish(ctx, job, files, log_digest, outcome.seconds,
                             f"compiled in {outcome.seconds:.1f} s on {ctx.worker_id}")
    return "published" if published else "finished elsewhere"
