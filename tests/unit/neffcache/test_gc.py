"""The GC pass against real databases (SQLite, and Postgres when given) and both object stores:
what it evicts and deletes, in which order, what it never touches, and the races of section
"Quota, eviction and GC" in the README, each played out step by step."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from neffcache import gc, invalidation
from neffcache.db import migrate
from neffcache.db.models import (
    Artifact,
    ArtifactUsage,
    Blob,
    GcRun,
    Job,
    Pin,
    PinnedArtifact,
    utcnow,
)
from neffcache.db.session import Database
from neffcache.digests import digest_of
from neffcache.eviction import Eviction, Reason
from neffcache.object_deletion import begin_deletion, ensure_stored, finish_deletion
from neffcache.settings import Settings
from neffcache.storage import ObjectStore
from neffcache.storage.base import PROBE_BYTES
from neffcache.storage.s3 import S3ObjectStore
from tests.support.cache_contents import Cache
from tests.support.databases import database_kinds, empty_database

GRACE_S = 3600.0
DAY = timedelta(days=1)


@pytest.fixture(params=database_kinds())
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    with empty_database(request.param, tmp_path, "gc") as url:
        migrate.upgrade(url)
        database = Database(url)
        yield database
        database.dispose()


@pytest.fixture
def cache(db: Database, object_store: ObjectStore) -> Cache:
    return Cache(db, object_store)


def settings(**given: Any) -> Settings:
    return Settings(gc_grace_s=GRACE_S, **given)


def run(cache: Cache, now: datetime | None = None, **given: Any) -> gc.GcReport:
    return gc.run_gc(cache.db, cache.store, settings(**given), holder="test", now=now or utcnow())


# --- eviction ------------------------------------------------------------------------------------

def test_over_the_quota_the_least_recently_used_go_and_their_objects_only_after_the_grace(cache: Cache) -> None:
    now = utcnow()
    shared = b"a log two artifacts share"
    oldest_pinned = cache.artifact(used=now - 9 * DAY)
    old = cache.artifact(used=now - 5 * DAY, shared=shared)
    mid = cache.artifact(used=now - 3 * DAY)
    new = cache.artifact(used=now - DAY, shared=shared)
    cache.pin("prod", oldest_pinned)
    quota = 2 * (100 + 64) + len(shared)  # room for the pinned one and the newest (with its log)
    old_files, mid_files = cache.files_of(old), cache.files_of(mid)

    report = run(cache, now, gc_quota_bytes=quota)

    assert [(e.key, e.reason) for e in report.evicted] == [(old, Reason.QUOTA), (mid, Reason.QUOTA)]
    assert cache.keys() == {oldest_pinned, new}
    # Marked, not deleted: a presigned URL handed out before the eviction still works.
    assert set(old_files) | set(mid_files) <= set(cache.marks())
    assert set(old_files) | set(mid_files) <= cache.stored()
    assert report.objects_deleted == 0

    later = run(cache, now + timedelta(seconds=GRACE_S + 1), gc_quota_bytes=quota)
    shared_digest = hashlib.sha256(shared).hexdigest()
    assert later.evicted == []
    gone = (set(old_files) | set(mid_files)) - {shared_digest}
    assert not gone & cache.stored()
    assert later.objects_deleted == len(gone) and later.objects_rescued == 1
    # The log the newest artifact still names was marked with `old`, and is kept.
    assert shared_digest in cache.stored() and cache.marks() == {}
    with cache.db.session() as session:
        runs = session.scalars(select(GcRun).order_by(GcRun.id)).all()
        assert [r.evicted_artifacts for r in runs] == [2, 0] and runs[1].objects_deleted == len(gone)


def test_the_dry_run_says_what_would_go_and_changes_nothing(cache: Cache) -> None:
    now = utcnow()
    later = now + timedelta(seconds=GRACE_S + 1)
    keep = cache.artifact(used=now)
    doomed = cache.artifact(size=300, used=now - 2 * DAY)
    orphan = cache.put(b"an upload whose row was never written")
    tables = ("artifacts", "artifact_files", "artifact_usage", "blobs", "jobs", "object_deletions", "gc_runs",
              "maintenance_leases", "pins")

    def snapshot() -> tuple[Any, ...]:
        with cache.db.session() as session:
            rows = tuple(tuple(map(tuple, session.execute(text(f"SELECT * FROM {t}")).all())) for t in tables)
        return rows, sorted(cache.stored())

    def dry_run(when: datetime) -> gc.GcReport:
        before = snapshot()
        report = gc.run_gc(cache.db, cache.store, settings(gc_quota_bytes=200), holder="test", now=when,
                           dry_run=True)
        assert snapshot() == before
        return report

    dry = dry_run(later)
    assert [e.key for e in dry.evicted] == [doomed]
    assert dry.orphans == [(orphan, 37)] and dry.objects_due == [(orphan, 37)]
    assert dry.to_json()["evicted_bytes"] == 364 and "would evict 1 artifacts (364 bytes" in dry.summary()

    run(cache, later, gc_quota_bytes=200)  # does it: evicts, marks the file, deletes the orphan
    assert cache.keys() == {keep} and orphan not in cache.stored()
    (doomed_file,) = set(cache.marks())
    dry = dry_run(later + timedelta(seconds=GRACE_S + 1))
    assert dry.evicted == [] and dry.objects_due == [(doomed_file, 364)]


def test_ttl_evicts_what_is_unused_for_longer_and_an_expired_pin_protects_nothing(cache: Cache) -> None:
    now = utcnow()
    stale = cache.artifact(used=now - 40 * DAY)
    never_used_old = cache.artifact(created=now - 40 * DAY)
    fresh = cache.artifact(used=now - DAY)
    pinned_stale = cache.artifact(used=now - 40 * DAY)
    lapsed = cache.artifact(used=now - 40 * DAY)
    cache.pin("prod", pinned_stale)
    cache.pin("last-release", lapsed, expires_at=now - DAY)

    report = run(cache, now, gc_ttl_s=30 * DAY.total_seconds())

    assert {e.key for e in report.evicted} == {stale, never_used_old, lapsed}
    assert all(e.reason == Reason.TTL for e in report.evicted)
    assert cache.keys() == {fresh, pinned_stale}
    assert report.pins_expired == 1
    with cache.db.session() as session:
        assert set(session.scalars(select(Pin.name))) == {"prod"}


def test_pinned_artifacts_alone_over_the_quota_stop_eviction_and_it_is_said(cache: Cache) -> None:
    now = utcnow()
    pinned = [cache.artifact(used=now - DAY * i) for i in range(3)]
    loose = cache.artifact(used=now)
    cache.pin("prod", *pinned)

    report = run(cache, now, gc_quota_bytes=100)

    assert [e.key for e in report.evicted] == [loose]
    assert cache.keys() == set(pinned)
    assert len(report.blocked) == 1 and report.blocked[0].namespace is None
    assert "pinned artifacts are never evicted" in report.summary()
    with cache.db.session() as session:
        last = session.scalars(select(GcRun).order_by(GcRun.id.desc())).first()
        assert last is not None and gc.blocked_of(last) == report.blocked


def test_evictions_are_announced_to_the_api_processes(cache: Cache) -> None:
    now = utcnow()
    doomed = cache.artifact(used=now - DAY)
    cache.artifact(used=now)
    heard: list[invalidation.Invalidation] = []
    gc.run_gc(cache.db, cache.store, settings(gc_quota_bytes=200), holder="test", now=now,
              announce=lambda what: heard.append(what) or True)
    assert heard == [invalidation.Invalidation.artifact(doomed)]


def test_an_artifact_used_after_the_plan_is_kept(cache: Cache) -> None:
    now = utcnow()
    key = cache.artifact(used=now - 5 * DAY)
    planned = Eviction(key, "default", 164, now - 5 * DAY, Reason.QUOTA)
    with cache.db.session() as session:
        usage = session.get(ArtifactUsage, key)
        assert usage is not None
        usage.last_used_at = now  # a hit flushed between the plan and the eviction
    assert gc.evict(cache.db, planned, now) is False
    assert key in cache.keys()


# --- the races, played step by step ----------------------------------------------------------------

def test_a_pin_added_as_the_artifact_is_evicted_keeps_it(cache: Cache) -> None:
    """The pin's transaction holds the artifact's row (FOR SHARE on Postgres; SQLite's one
    writer at a time) while the eviction waits for its row lock; it then sees the pin."""
    now = utcnow()
    key = cache.artifact(used=now - 5 * DAY)
    planned = Eviction(key, "default", 164, now - 5 * DAY, Reason.QUOTA)
    outcome: list[bool] = []
    with cache.db.session() as session:
        session.execute(select(Artifact.key).where(Artifact.key == key).with_for_update(read=True))
        session.add(Pin(name="prod", owner="test", created_at=now, entries=[PinnedArtifact(artifact_key=key)]))
        session.flush()
        evicting = threading.Thread(target=lambda: outcome.append(gc.evict(cache.db, planned, now)))
        evicting.start()
        evicting.join(0.5)
        assert evicting.is_alive()  # waiting for the pin's transaction
    evicting.join(30)
    assert outcome == [False] and key in cache.keys()


def test_a_compile_request_naming_a_blob_as_it_is_swept_keeps_it(cache: Cache) -> None:
    from neffcache.service.compile_decisions import touch_blob

    now = utcnow()
    digest = "sha256:" + cache.put(b"a model nobody compiled for a while")
    with cache.db.session() as session:
        session.add(Blob(digest=digest, size=35, created_at=now - 30 * DAY, last_used_at=now - 30 * DAY))
    ttl = 7 * DAY.total_seconds()
    outcome: list[bool] = []
    with cache.db.session() as session:
        touch_blob(session, digest)  # what a compile request does first, holding the row
        sweeping = threading.Thread(target=lambda: outcome.append(gc.delete_blob(cache.db, digest, utcnow(), ttl)))
        sweeping.start()
        sweeping.join(0.5)
        assert sweeping.is_alive()
    sweeping.join(30)
    assert outcome == [False]
    with cache.db.session() as session:
        assert session.get(Blob, digest) is not None


def test_unused_blobs_go_after_their_ttl_but_not_while_an_artifact_or_an_active_job_names_them(
        cache: Cache) -> None:
    now = utcnow()
    old = now - 30 * DAY
    unused, in_job, fresh = (cache.put(f"model {i}".encode()) for i in range(3))
    artifact_key = cache.artifact(used=now)
    with cache.db.session() as session:
        model = session.get(Artifact, artifact_key)
        assert model is not None
        session.add_all([Blob(digest=digest_of(d), size=7, created_at=old, last_used_at=old) for d in (unused, in_job)])
        session.add(Blob(digest=digest_of(fresh), size=7, created_at=old, last_used_at=now - DAY))
        session.add(Blob(digest=model.model_digest, size=1, created_at=old, last_used_at=old))
        manifest = {**model.manifest, "model": {"digest": digest_of(in_job)}}
        session.add(Job(id=str(uuid.uuid4()), key="k" * 64, manifest=manifest, queue="q", state="queued",
                        attempts=0, max_attempts=1, cancel_requested=False, created_at=old))

    report = run(cache, now)

    assert report.blobs == [(digest_of(unused), 7)]
    with cache.db.session() as session:
        assert set(session.scalars(select(Blob.digest))) == {digest_of(in_job), digest_of(fresh), model.model_digest}
    assert cache.marks() == {unused: "blob"}
    run(cache, now + timedelta(seconds=GRACE_S + 1))
    assert unused not in cache.stored() and {in_job, fresh} <= cache.stored()


def test_old_finished_jobs_without_an_artifact_go_with_their_logs(cache: Cache) -> None:
    now = utcnow()
    log_digest = cache.put(b"error: unsupported op")
    kept_log = cache.put(b"log of a recent failure")
    published = cache.artifact(used=now)
    rows = [("old-failed", "x" * 64, now - 100 * DAY, log_digest), ("recent", "y" * 64, now - DAY, kept_log),
            ("old-but-published", published, now - 100 * DAY, None)]
    with cache.db.session() as session:
        for job_id, key, finished, digest in rows:
            session.add(Job(id=job_id, key=key, manifest={}, namespace="default", queue="q", state="failed",
                            attempts=1, max_attempts=1, cancel_requested=False, created_at=finished,
                            finished_at=finished, log_digest=digest_of(digest) if digest else None))

    report = run(cache, now)

    assert report.jobs == 1
    with cache.db.session() as session:
        assert set(session.scalars(select(Job.id))) == {"recent", "old-but-published"}
    run(cache, now + timedelta(seconds=GRACE_S + 1))
    assert log_digest not in cache.stored() and kept_log in cache.stored()


def test_orphans_older_than_the_grace_go_and_fresh_ones_and_the_probe_stay(cache: Cache) -> None:
    orphan = cache.put(b"a publish that died before its row")
    probe = cache.put(PROBE_BYTES)
    named = cache.artifact()
    later = utcnow() + timedelta(seconds=GRACE_S + 5)

    assert run(cache, utcnow()).orphans == []  # written just now: within the grace
    report = run(cache, later)

    assert report.orphans == [(orphan, len(b"a publish that died before its row"))]
    assert orphan not in cache.stored()
    assert {probe, *cache.files_of(named)} <= cache.stored()


def test_one_pass_at_a_time(cache: Cache) -> None:
    now = utcnow()
    assert gc.acquire_lease(cache.db, "worker-a", now) is None
    report = gc.run_gc(cache.db, cache.store, settings(gc_quota_bytes=0), holder="worker-b", now=now)
    assert report.skipped is not None and "worker-a" in report.skipped
    assert report.evicted == [] and "skipped" in report.summary()
    # A lease whose holder died frees itself.
    assert gc.acquire_lease(cache.db, "worker-b", now + timedelta(seconds=gc.LEASE_S + 1)) is None
    gc.release_lease(cache.db, "worker-b")
    assert gc.acquire_lease(cache.db, "worker-c", now) is None


# --- the object deletion protocol ----------------------------------------------------------------

def _marked(cache: Cache, data: bytes, when: datetime) -> str:
    from neffcache.object_deletion import mark

    digest = cache.put(data)
    with cache.db.session() as session:
        mark(session, [(digest, len(data))], "evicted", when)
    return digest


def _name(cache: Cache, digest: str) -> None:
    """A writer's commit: a blob row naming the object."""
    with cache.db.session() as session:
        session.add(Blob(digest=digest_of(digest), size=1))


def test_a_row_committed_before_the_check_keeps_the_object(cache: Cache) -> None:
    data = b"bytes a writer deduped on"
    digest = _marked(cache, data, utcnow() - 2 * DAY)
    assert begin_deletion(cache.db, digest, utcnow())
    _name(cache, digest)  # committed after step 3, before step 4
    assert finish_deletion(cache.db, cache.store, digest) is False
    assert digest in cache.stored() and cache.marks() == {}
    assert ensure_stored(cache.db, cache.store, {digest: lambda: pytest.fail("stored again")}) == []


def test_a_writer_that_deduped_on_an_object_deleted_under_it_stores_it_again(cache: Cache) -> None:
    data = b"bytes a writer deduped on, deleted before its commit"
    digest = _marked(cache, data, utcnow() - 2 * DAY)
    assert begin_deletion(cache.db, digest, utcnow())
    assert finish_deletion(cache.db, cache.store, digest) is True  # checked before the writer's commit
    _name(cache, digest)
    assert digest not in cache.stored()

    again = ensure_stored(cache.db, cache.store, {digest: lambda: cache.store.put(io.BytesIO(data), digest)})

    assert again == [digest] and cache.store.verify(digest) is not None and cache.store.verify(digest).ok  # type: ignore[union-attr]


def test_a_writer_waits_for_a_deletion_in_progress_then_checks(cache: Cache) -> None:
    data = b"bytes being deleted as the writer commits"
    digest = _marked(cache, data, utcnow() - 2 * DAY)
    assert begin_deletion(cache.db, digest, utcnow())
    _name(cache, digest)
    result: list[list[str]] = []
    writer = threading.Thread(target=lambda: result.append(ensure_stored(
        cache.db, cache.store, {digest: lambda: cache.store.put(io.BytesIO(data), digest)})))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive()  # the deletion is in progress: it waits
    finish_deletion(cache.db, cache.store, digest)  # sees the writer's row: keeps the object
    writer.join(30)
    assert result == [[]] and digest in cache.stored()


# --- presigned URLs outlive the eviction ----------------------------------------------------------

def test_a_presigned_url_handed_out_before_the_eviction_works_until_the_grace_ends(
        db: Database, seaweedfs: Any) -> None:
    from tests.support.storage_fixtures import s3_settings_overrides

    store = S3ObjectStore.from_settings(
        Settings(**s3_settings_overrides(seaweedfs, f"gc-{uuid.uuid4().hex[:8]}")), seaweedfs.bucket,
        f"gc-{uuid.uuid4().hex[:8]}")
    cache = Cache(db, store)
    now = utcnow()
    key = cache.artifact(used=now - DAY)
    (digest,) = cache.files_of(key)
    url = store.presigned_url(digest, 900)
    assert url is not None

    run(cache, now, gc_quota_bytes=0)
    assert key not in cache.keys()
    assert hashlib.sha256(httpx.get(url).raise_for_status().content).hexdigest() == digest

    run(cache, now + timedelta(seconds=GRACE_S + 1), gc_quota_bytes=0)
    assert httpx.get(url).status_code == 404
