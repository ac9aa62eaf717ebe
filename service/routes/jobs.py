"""Jobs: state, log, listing and cancellation."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy import select, update

from neffcache.db.models import CANCELLED, QUEUED, RUNNING, Job, utcnow
from neffcache.errors import JobFinished, NotFound, CorruptObject
from service.auth import READ, WRITE
from service.pagination import MAX_LIMIT, next_cursor, page
from service.routes.deps import context, stream_chunks
from service.views import job_view, bare_hex

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _get(session: Any, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} does not exist", job=job_id)
    return job


@router.get("", dependencies=[READ])
def list_jobs(
    request: Request,
    state: JobState | None = None,
    limit: int = Query(50, ge=1, le=MAX_LIMIT),
    cursor: str | None = None,
) -> dict[str, Any]:
    query = select(Job)
    if state:
        query = query.where(Job.state == state)
    with context(request).db.session() as session:
        rows = session.scalars(page(query, Job.created_at, Job.id, limit, cursor)).all()
        rows, cursor_out = next_cursor(rows, limit, lambda j: j.created_at, lambda j: j.id)
        return {"jobs": [job_view(j) for j in rows], "next_cursor": cursor_out}


@router.get("/{job_id}", dependencies=[READ])
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    with context(request).db.session() as session:
        return job_view(_get(session, job_id))


@router.get("/{job_id}/log", dependencies=[READ], response_class=StreamingResponse)
def get_job_log(job_id: str, request: Request) -> StreamingResponse:
    """The whole compiler log of the job's last attempt (text)."""
    ctx = context(request)
    with ctx.db.session() as session:
        job = _get(session, job_id)
        digest, state = job.log_digest, job.state
    if digest is None:
        raise NotFound(f"job {job_id} has no log yet (state {state})", job=job_id)
    stream = ctx.store.open(bare_hex(digest))
    if stream is None:
        raise CorruptObject(f"the log of job {job_id} ({digest}) is missing from the object store")
    return StreamingResponse(stream_chunks(stream), media_type="text/plain; charset=utf-8")


@router.post("/{job_id}/cancel", dependencies=[WRITE], responses={202: {"description": "running: the worker was asked to stop"}})
def cancel_job(job_id: str, request: Request) -> JSONResponse:
    """Cancel a queued job at once; ask the worker running a job to stop it."""
    ctx = context(request)
    with ctx.db.session() as session:
        _get(session, job_id)
        # Conditional updates: a worker may claim or finish the job between our read and write.
        if _transition(session, job_id, QUEUED, state=CANCELLED, finished_at=utcnow(), message="cancelled while queued"):
            status = 200
        elif _transition(session, job_id, RUNNING, cancel_requested=True):
            status = 202
        else:
            job = _get(session, job_id)
            raise JobFinished(f"job {job_id} already ended ({job.state})", job=job_id)
        session.expire_all()
        body = job_view(_get(session, job_id))
    # A cancelled queued job may still sit in RQ; the worker sees its state and skips it.
    return JSONResponse(body, status_code=status)


def _transition(session: Any, job_id: str, from_state: str, **values: Any) -> bool:
    result = session.execute(update(Job).where(Job.id == job_id, Job.state == from_state).values(**values))
    return result.rowcount == 1
