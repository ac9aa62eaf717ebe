"""Hand a committed job to its queue, and note that it got there.

Called after the transaction that created the job has committed, and by the workers' sweep
for retries that are due and for jobs whose first enqueue failed: a job with no `enqueued_at`
is enqueued again, so none is lost between the database and the queue.
"""

from __future__ import annotations

import logging
from typing import Any

from neffcache.db.models import utcnow
from neffcache.db.session import Database
from neffcache.lifecycle import Step, transition
from neffcache.queue import enqueue_compile

log = logging.getLogger(__name__)


def dispatch(db: Database, redis: Any, queue: str, job_id: str, attempt: int) -> bool:
    # Enqueue first, then mark: dying in between leaves a duplicate delivery (harmless, the
    # claim is conditional), never a job that is marked enqueued but is not in Redis.
    try:
        enqueue_compile(redis, queue, job_id, attempt)
    except Exception as exc:  # noqa: BLE001 - any Redis failure: leave it to the sweep
        log.warning("enqueue of job %s attempt %d failed (%s); the sweep will retry", job_id, attempt, exc)
        return False
    with db.session() as session:
        transition(session, job_id, Step.ENQUEUE, enqueued_at=utcnow())
    return True
