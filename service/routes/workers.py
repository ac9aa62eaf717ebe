"""Compile workers: who is registered, with which toolchain, and whether they are alive."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from neffcache.db.models import Worker, utcnow
from neffcache.lifecycle import WorkerState
from neffcache.service.auth import READ
from neffcache.service.routes.deps import context
from neffcache.service.views import worker_view

router = APIRouter(prefix="/v1", tags=["workers"], dependencies=[READ])


@router.get("/workers")
def list_workers(request: Request) -> dict[str, Any]:
    ctx = context(request)
    lost_before = utcnow() - timedelta(seconds=ctx.settings.worker_lost_after_s)
    with ctx.db.session() as session:
        rows = session.scalars(select(Worker).order_by(Worker.last_heartbeat.desc())).all()
        return {
            "workers": [
                worker_view(w, WorkerState.LOST if w.state != WorkerState.STOPPED and w.last_heartbeat < lost_before
                            else w.state)
                for w in rows
            ]
        }
