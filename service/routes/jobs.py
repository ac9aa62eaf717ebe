"""Jobs: state, log, listing and cancellation."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from sqlalchemy import select

from neffcache import lifecycle, logs
from neffcache.db.models import Job
from neffcache.digests import bare_hex
from neffcache.errors import Forbidden, JobFinished, NotFound
from neffcache.service.auth import READ, WRITE, grant
from neffcache.service.errors import STORE_ERRORS, error_responses
from neffcache.service.pagination import MAX_LIMIT, fetch_page
from neffcache.service.resolve import PREFIX_ERRORS, JobIdInPath, resolve_job
from neffcache.service.routes.deps import context
from neffcache.service.streaming import stored_chunks
from neffcache.service.views import job_view
from neffcache.spec import NAMESPACE_PATTERN

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
LOG_TYPE = "text/plain; charset=utf-8"
# The listing's filter: a job state (a Literal, so that a bad value is refused as a literal).
# mypy cannot read a Literal built at run time; to it the filter is the str it holds.
if TYPE_CHECKING:
    JobState = str
else:
    JobState = Literal[tuple(s.value for s in lifecycle.JobState)]


# Naming a job: its id or a prefix, found in a namespace the token may act in.
NAMED_ERRORS = (*PREFIX_ERRORS, Forbidden)


def _get(request: Request, session: Any, job_id: str) -> Job:
    """The job named by its id or a unique prefix of it (service.resolve), if the token may act
    in its namespace."""
    job = resolve_job(session, job_id)
    grant(request).check(job.namespace)
    return job


@router.get("", dependencies=[READ], responses=error_responses(Forbidden))
def list_jobs(
    request: Request,
    state: JobState | None = None,
    namespace: Annotated[str | None, Query(pattern=NAMESPACE_PATTERN)] = None,
    limit: int = Query(50, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> dict[str, Any]:
    """Jobs in the token's namespaces, newest first."""
    query = grant(request).limit(select(Job), Job.namespace)
    if namespace:
        grant(request).check(namespace)
        query = query.where(Job.namespace == namespace)
    if state:
        query = query.where(Job.state == state)
    with context(request).db.session() as session:
        rows, cursor_out = fetch_page(session, query, Job.created_at, Job.id, limit, cursor)
        return {"jobs": [job_view(j) for j in rows], "next_cursor": cursor_out}


@router.get("/{job_id}", dependencies=[READ], responses=error_responses(*NAMED_ERRORS))
def get_job(job_id: JobIdInPath, request: Request) -> dict[str, Any]:
    with context(request).db.session() as session:
        return job_view(_get(request, session, job_id))


@router.get("/{job_id}/log", dependencies=[READ], response_class=PlainTextResponse,
            responses=error_responses(*NAMED_ERRORS, *STORE_ERRORS))
def get_job_log(
    job_id: JobIdInPath,
    request: Request,
    offset: int = Query(0, ge=0, description="first byte wanted: where the previous read ended"),
) -> Response:
    """The compiler log of the job's last attempt, from `offset`.

    Once the attempt has ended this is the whole stored log. While it runs it is the log's
    latest tail (refreshed by the worker every few seconds): `X-Neffcache-Log-Skipped` says
    how many bytes after `offset` are no longer available. `X-Neffcache-Log-Size` is the log's
    size so far and `X-Neffcache-Log-Complete` whether it is final. The stored log carries its
    digest in `X-Neffcache-Sha256` (of the whole log, whatever the offset): it is verified as it
    streams, and a body that ends early is a corrupt log, never a network failure."""
    ctx = context(request)
    with ctx.db.session() as session:
        job = _get(request, session, job_id)
        job_id = job.id
        digest, tail, size, state = job.log_digest, job.log_tail, job.log_bytes, job.state
    if digest is not None:
        # Verified while streamed: a corrupt log is a 502 or a cut transfer, never wrong bytes.
        chunks = stored_chunks(ctx, bare_hex(digest), found_by="job_log", skip=offset,
                               what=f"the log of job {job_id} ({digest})")
        headers = {"X-Neffcache-Log-Size": str(size or 0), "X-Neffcache-Log-Complete": "true",
                   "X-Neffcache-Log-Skipped": "0", "X-Neffcache-Sha256": bare_hex(digest)}
        return StreamingResponse(chunks, media_type=LOG_TYPE, headers=headers)
    if tail is None:
        raise NotFound(f"job {job_id} has no log yet (state {state})", job=job_id)
    data = tail.encode()
    start = max((size or len(data)) - len(data), 0)
    headers = {"X-Neffcache-Log-Size": str(start + len(data)), "X-Neffcache-Log-Complete": "false",
               "X-Neffcache-Log-Skipped": str(max(0, start - offset))}
    return Response(data[max(0, offset - start):], media_type=LOG_TYPE, headers=headers)


@router.post(
    "/{job_id}/cancel", dependencies=[WRITE],
    responses=error_responses(*NAMED_ERRORS, JobFinished,
                              into={202: {"description": "running: the worker was asked to stop"}})
)
def cancel_job(job_id: JobIdInPath, request: Request) -> JSONResponse:
    """Cancel a queued job at once; ask the worker running a job to stop it."""
    ctx = context(request)
    with ctx.db.session() as session:
        job_id = _get(request, session, job_id).id
        # Conditional updates: a worker may claim or finish the job between our read and write.
        step = lifecycle.cancel(session, job_id)
        if step == lifecycle.Step.CANCEL:
            status = 200
        elif step == lifecycle.Step.REQUEST_CANCEL:
            status = 202
        else:
            job = _get(request, session, job_id)
            raise JobFinished(f"job {job_id} already ended ({job.state})", job=job_id)
        session.expire_all()
        cancelled = _get(request, session, job_id)
        body = job_view(cancelled)
        key, worker = cancelled.key, cancelled.worker_id
    logs.job_transition(log, job=job_id, key=key, state=body["state"], step=str(step), worker=worker)
    # A cancelled queued job may still sit in RQ; the worker sees its state and skips it.
    return JSONResponse(body, status_code=status)
