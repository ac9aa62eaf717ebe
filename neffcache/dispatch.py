"""Hand a committed job to its queue, and note that it got there.

Called after the transaction that created (or re-queued) the job has committed. If Redis
refuses, the job stays `queued` with no `enqueued_at`, and the workers' sweep enqueues it
later: a job is never lost between the database and the queue.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update

from neffcache.db.models import QUEUED, Job, utcnow
from neffcache.db.session import Database
from neffcache.queue import enqueue_compile

log = logging.getLogger(__name__)


def dispatch(db: Database, redis: Any, queue: str, job_id: str, attempt: int, delay_s: float = 0.0) -> bool:
    try:
        enqueue_compile(redis, queue, job_id, attempt, delay_s=delay_s)
    except Exception as exc:  # noqa: BLE001 - any Redis failure: leave it to the sweep
        log.warning("enqueue of job %s attempt %d failed (%s); the sweep will retry", job_id, attempt, exc)
        return False
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id, Job.state == QUEUED).values(enqueued_at=utcnow()))
    return True
