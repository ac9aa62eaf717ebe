"""Deleting stored objects while others may be writing the same bytes.

Objects are content-addressed and shared: one object may be an artifact's file, a blob and a
job's log at once, and a writer that finds its bytes already stored writes nothing (a dedupe). So
an object is deleted only when no row names it, and the order below keeps a writer that dedupes
on an object the GC is deleting from publishing a row that names nothing:

    GC (delete_due)                              writer (ensure_stored)
    1. mark: a row in object_deletions           a. put the bytes (maybe a dedupe)
       (evicted, unused blob, old log, orphan)   b. commit the row that names them
    2. wait the grace period (presigned URLs     c. after (b): wait while a deletion of any
       handed out before the mark stay valid)       of its digests is in progress, then stat
    3. set deleting_since, commit                   each one and put again what is missing
    4. in a new transaction: is it referenced?
       yes: drop the mark (rescued); no: delete
       the object, then drop the mark

Either the writer's commit (b) comes before the GC's check (4), which then sees the row and
keeps the object; or it comes after (4), hence after (3), and the writer's look (c) sees the
deletion in progress (or, once it is over, the missing object) and puts the bytes again from
what it still holds. A GC that dies after (3) leaves `deleting_since` set; after
STALE_DELETION_S the mark is due again and writers stop waiting for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from neffcache.db.models import ArtifactFile, Blob, Job, ObjectDeletion, utcnow
from neffcache.db.session import Database
from neffcache.digests import digest_of
from neffcache.errors import StorageError
from neffcache.storage.base import ObjectStore

log = logging.getLogger(__name__)

# A deletion in progress for longer than this was abandoned (its GC died): due again.
STALE_DELETION_S = 600.0
# How long a writer waits, at most, for a deletion of its bytes to end before it checks them.
WRITER_WAIT_S = 30.0


class MarkReason:
    EVICTED = "evicted"  # a file of an evicted artifact
    BLOB = "blob"  # an unused blob, its row deleted
    JOB_LOG = "job_log"  # the log of a job deleted after its retention
    ORPHAN = "orphan"  # stored, and named by no row (a publish that died before its row)


def mark(session: Session, objects: Iterable[tuple[str, int | None]], reason: str, marked_at: datetime) -> None:
    """Mark objects (bare hex digest, size) for deletion; one already marked keeps its mark."""
    rows = [{"digest": d, "size": size, "reason": reason, "marked_at": marked_at} for d, size in objects]
    if not rows:
        return
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(ObjectDeletion).values(rows).on_conflict_do_nothing(index_elements=["digest"]))


def referenced(session: Session, digest: str) -> bool:
    """Whether any row names the object: an artifact's file, a blob, a job's log."""
    named = digest_of(digest)
    return bool(session.scalar(select(or_(
        exists().where(ArtifactFile.digest == named),
        exists().where(Blob.digest == named),
        exists().where(Job.log_digest == named),
    ))))


def due(session: Session, now: datetime, grace_s: float, limit: int | None = None) -> list[ObjectDeletion]:
    """Marks whose grace period has passed (and that no live GC is deleting), oldest first."""
    query = (select(ObjectDeletion)
             .where(ObjectDeletion.marked_at < now - timedelta(seconds=grace_s),
                    or_(ObjectDeletion.deleting_since.is_(None),
                        ObjectDeletion.deleting_since < now - timedelta(seconds=STALE_DELETION_S)))
             .order_by(ObjectDeletion.marked_at, ObjectDeletion.digest))
    return list(session.scalars(query.limit(limit) if limit else query))


def begin_deletion(db: Database, digest: str, now: datetime) -> bool:
    """Step 3: say, committed, that the object is being deleted. False when the mark is gone
    (rescued or deleted by another GC) or another live GC is deleting it."""
    with db.session() as session:
        started = session.execute(
            update(ObjectDeletion)
            .where(ObjectDeletion.digest == digest,
                   or_(ObjectDeletion.deleting_since.is_(None),
                       ObjectDeletion.deleting_since < now - timedelta(seconds=STALE_DELETION_S)))
            .values(deleting_since=now).execution_options(synchronize_session=False))
        return bool(getattr(started, "rowcount", 0))


def finish_deletion(db: Database, store: ObjectStore, digest: str) -> bool:
    """Step 4, after `begin_deletion`: delete the object unless a row names it now; the mark
    is dropped either way. Whether the object was deleted."""
    with db.session() as session:
        keep = referenced(session, digest)
    if not keep:
        store.delete(digest)  # a StorageError leaves the mark in progress: due again once stale
    with db.session() as session:
        session.execute(delete(ObjectDeletion).where(ObjectDeletion.digest == digest))
    return not keep


@dataclass
class Deleted:
    objects: int = 0
    bytes: int = 0
    rescued: int = 0  # marked, but named by a row again by the time of deletion: kept
    failed: int = 0  # the store refused the delete: retried by a later pass


def delete_due(db: Database, store: ObjectStore, now: datetime, grace_s: float) -> Deleted:
    """Steps 3 and 4 for every mark that is due."""
    with db.session() as session:
        marks = [(m.digest, m.size or 0) for m in due(session, now, grace_s)]
    result = Deleted()
    for digest, size in marks:
        if not begin_deletion(db, digest, now):
            continue
        try:
            deleted = finish_deletion(db, store, digest)
        except StorageError as exc:
            log.warning("gc: could not delete object %s (retried by a later pass): %s", digest, exc.detail)
            result.failed += 1
            continue
        if deleted:
            result.objects += 1
            result.bytes += size
        else:
            result.rescued += 1
    return result


def ensure_stored(db: Database, store: ObjectStore, put_again: Mapping[str, Callable[[], object]],
                  wait_s: float = WRITER_WAIT_S) -> list[str]:
    """Step (c), for a writer whose row naming these objects (bare hex digest -> how to store
    its bytes again) is committed: wait while any of them is being deleted, then put again each
    one the store no longer has. The digests put again (normally none)."""
    if not put_again:
        return []
    digests = sorted(put_again)
    deadline = time.monotonic() + wait_s
    while True:
        with db.session() as session:
            now = utcnow()
            busy = session.scalars(select(ObjectDeletion.digest).where(
                ObjectDeletion.digest.in_(digests), ObjectDeletion.deleting_since.is_not(None),
                ObjectDeletion.deleting_since >= now - timedelta(seconds=STALE_DELETION_S))).all()
        if not busy or time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    stored_again = []
    for digest in digests:
        if store.stat(digest) is None:
            log.warning("object %s was deleted by the GC as this row was committed; storing it again", digest)
            put_again[digest]()
            stored_again.append(digest)
    return stored_again
