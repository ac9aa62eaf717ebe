"""Prometheus metrics at /metrics.

Request counters live in this process. Compile results, durations, queue depth and live
workers are read from the database at scrape time: workers write them there, and every
service replica then reports the same truth.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from neffcache import gc, pins, retired
from neffcache.db.models import Artifact, GcRun, Job, Worker, utcnow
from neffcache.lifecycle import FINAL_STATES, JobState, WorkerState, heard_since
from neffcache.retired import DURATION_BUCKETS

if TYPE_CHECKING:
    from neffcache.db.session import Database
    from neffcache.settings import Settings

log = logging.getLogger(__name__)

# What reads stored objects and finds them corrupt (neffcache_corrupt_objects' found_by).
CORRUPT_FOUND_BY = ("blob", "artifact_file", "job_log", "upload")
# The error statuses the service answers with (500 internal, 502 corrupt_object, 503
# storage_unavailable and not_ready): listed at 0 from the start.
WATCHED_STATUSES = (500, 502, 503)


class _DatabaseCollector:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        # Gathered whole before any is yielded: a database that fails half way shows as down,
        # not as half of the figures.
        try:
            metrics = list(self._collect())
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the DB is down
            log.warning("metrics: database unavailable: %s", exc)
            metrics = []
        yield from metrics
        yield GaugeMetricFamily("neffcache_database_up", "1 when this scrape's reads of the database succeeded",
                                value=1 if metrics else 0)

    def _collect(self) -> Iterator[Metric]:
        compiles = CounterMetricFamily(
            "neffcache_compiles", "Finished compile jobs by result and failure class",
            labels=["result", "failure_class"],
        )
        queued = GaugeMetricFamily("neffcache_jobs_queued", "Queued jobs per toolchain queue", labels=["queue"])
        live = GaugeMetricFamily("neffcache_workers_live", "Workers with a recent heartbeat", labels=["compiler"])
        buckets_sql = [func.sum(case((Artifact.compile_seconds <= b, 1), else_=0)) for b in DURATION_BUCKETS]
        with self.db.session() as s:
            # What the GC deleted is added back: a counter never goes down (neffcache.retired).
            finished = Tally(retired.retired_compiles(s))
            for state, failure, count in s.execute(
                select(Job.state, Job.failure_class, func.count()).where(Job.state.in_(FINAL_STATES))
                .group_by(Job.state, Job.failure_class)
            ):
                finished[(state, failure or "")] += count
            for (state, failure), count in sorted(finished.items()):
                compiles.add_metric([state, failure], count)
            for queue, count in s.execute(
                select(Job.queue, func.count()).where(Job.state == JobState.QUEUED).group_by(Job.queue)
            ):
                queued.add_metric([queue], count)
            for compiler, count in s.execute(
                select(Worker.compiler_name + "==" + Worker.compiler_version, func.count())
                .where(heard_since(self.settings.worker_lost_after_s))
                .group_by(Worker.compiler_name, Worker.compiler_version)
            ):
                live.add_metric([compiler], count)
            row = s.execute(
                select(func.count(), func.coalesce(func.sum(Artifact.compile_seconds), 0.0), *buckets_sql)
            ).one()
            evicted_buckets, evicted, evicted_seconds = retired.retired_durations(s)
            yield from self._queues(s)
            yield from self._storage(s)
        total, seconds_sum, *cumulative = row
        hist = HistogramMetricFamily(
            "neffcache_compile_duration_seconds", "Compile time of the artifacts published (evicted ones included)",
            buckets=[(str(float(b)), int(c or 0) + e)
                     for b, c, e in zip(DURATION_BUCKETS, cumulative, evicted_buckets, strict=True)]
            + [("+Inf", int(total) + evicted)],
            sum_value=float(seconds_sum) + evicted_seconds,
        )
        yield from (compiles, hist, queued, live)


    def _queues(self, s: Session) -> Iterator[Metric]:
        """How long the oldest due job of each queue has waited, how many live workers serve
        each queue (0 for a queue with jobs and no worker: nothing will run them), and the
        workers that went silent without stopping."""
        now = utcnow()
        # A retry waits out its backoff (not_before) before it is due: it waits from then.
        due_since = func.coalesce(Job.not_before, Job.created_at)
        oldest = GaugeMetricFamily("neffcache_jobs_queued_oldest_age_seconds",
                                   "Seconds the oldest due queued job of each queue has waited", labels=["queue"])
        waiting: set[str] = set()
        for queue, since in s.execute(
            select(Job.queue, func.min(due_since)).where(
                Job.state == JobState.QUEUED, (Job.not_before.is_(None)) | (Job.not_before <= now))
            .group_by(Job.queue)
        ):
            oldest.add_metric([queue], max(0.0, (now - since).total_seconds()))
            waiting.add(queue)
        waiting.update(s.scalars(select(Job.queue).where(Job.state == JobState.QUEUED).distinct()))
        served: dict[str, int] = dict.fromkeys(waiting, 0)
        for queues in s.scalars(select(Worker.queues).where(heard_since(self.settings.worker_lost_after_s))):
            for queue in queues or ():
                served[queue] = served.get(queue, 0) + 1
        serving = GaugeMetricFamily("neffcache_queue_workers_live",
                                    "Live workers serving each queue (each queue with queued jobs is listed)",
                                    labels=["queue"])
        for queue, count in sorted(served.items()):
            serving.add_metric([queue], count)
        lost = GaugeMetricFamily("neffcache_workers_lost",
                                 "Workers silent past NEFFCACHE_WORKER_LOST_AFTER_S that did not stop cleanly",
                                 labels=["compiler"])
        silent = Worker.last_heartbeat < now - timedelta(seconds=self.settings.worker_lost_after_s)
        for compiler, count in s.execute(
            select(Worker.compiler_name + "==" + Worker.compiler_version, func.count())
            .where(silent, Worker.state != WorkerState.STOPPED.value)
            .group_by(Worker.compiler_name, Worker.compiler_version)
        ):
            lost.add_metric([compiler], count)
        yield from (oldest, serving, lost)

    def _storage(self, s: Session) -> Iterator[Metric]:
        """What the cache holds against its quota, and what the GC passes did (summed over the
        gc_runs table, so every replica reports the same counts)."""
        sizes = gc.artifact_sizes()
        now = utcnow()
        held = pins.pinned_clause(sizes.c.artifact_key, now)
        stored, pinned = s.execute(select(func.coalesce(func.sum(sizes.c.size), 0),
                                          func.coalesce(func.sum(sizes.c.size).filter(held), 0))).one()
        yield GaugeMetricFamily("neffcache_stored_bytes", "Bytes of the published artifacts' files", value=int(stored))
        yield GaugeMetricFamily("neffcache_pinned_bytes", "Bytes of the artifacts a pin holds", value=int(pinned))
        if self.settings.gc_quota_bytes is not None:
            yield GaugeMetricFamily("neffcache_quota_bytes", "The deployment's quota (NEFFCACHE_GC_QUOTA_BYTES)",
                                    value=self.settings.gc_quota_bytes)
        totals = s.execute(select(func.count(), *(func.coalesce(func.sum(c), 0) for c in (
            GcRun.evicted_artifacts, GcRun.evicted_bytes, GcRun.objects_deleted, GcRun.bytes_deleted,
            GcRun.blobs_deleted)))).one()
        runs, evictions, evicted_bytes, objects, deleted_bytes, blobs = (int(v) for v in totals)
        for name, doc, value in (
            ("neffcache_gc_runs", "GC passes that ran", runs),
            ("neffcache_gc_evictions", "Artifacts evicted by the GC", evictions),
            ("neffcache_gc_evicted_bytes", "Bytes of the artifacts evicted by the GC", evicted_bytes),
            ("neffcache_gc_objects_deleted",
             "Stored objects the GC deleted, a grace period after their mark", objects),
            ("neffcache_gc_deleted_bytes", "Bytes of the stored objects the GC deleted", deleted_bytes),
            ("neffcache_gc_blobs_deleted", "Unused blobs whose rows the GC deleted", blobs),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        last = s.scalars(select(GcRun).order_by(GcRun.id.desc()).limit(1)).first()
        if last is not None:
            yield GaugeMetricFamily("neffcache_gc_last_run_timestamp_seconds", "When the last GC pass finished",
                                    value=(last.finished_at or last.started_at).timestamp())
        yield GaugeMetricFamily("neffcache_gc_blocked", "1 when the last GC pass stopped short of a quota because "
                                "pinned artifacts alone exceed it", value=1 if last is not None and last.blocked else 0)


class ServiceMetrics:
    def __init__(self, db: Database, settings: Settings) -> None:
        # A registry per app, not the global one: several apps (tests) live in one process.
        self.registry = CollectorRegistry()
        self.cache_requests = Counter(
            "neffcache_cache_requests", "Lookups, compile requests and downloads by outcome",
            ["kind", "outcome", "target"], registry=self.registry,
        )
        # Hits (and artifact views) by where their answer came from: `lane` (service.hit_lane,
        # before routing), `memory` (the route, from memory: no database, no thread) or
        # `database` (something it needed was not in memory; see README, "The hit path").
        self.hits_served = Counter(
            "neffcache_hits_served", "Cache hits and artifact views answered, by where the answer came from",
            ["kind", "source"], registry=self.registry,
        )
        # Stored objects this process found not to hash to their digest, by what was reading them
        # (`blob`, `artifact_file`, `job_log`: a download or log the service streamed; `upload`: a
        # re-upload that replaced the corrupt copy). Workers report theirs in the job's message.
        self.corrupt_objects = Counter(
            "neffcache_corrupt_objects", "Stored objects found corrupt when read, by what read them",
            ["found_by"], registry=self.registry,
        )
        # The cache-event writer (service.events): batch sizes, how old a batch's first event
        # was when written, flushes that failed (kept for the next) and events dropped.
        self.event_batch = Histogram(
            "neffcache_event_batch_size", "Cache events written per flush", registry=self.registry,
            buckets=(1, 10, 100, 1000, 10000, 100000),
        )
        self.event_lag = Gauge(
            "neffcache_event_flush_lag_seconds", "Age of the oldest event of the last flush when it was written",
            registry=self.registry,
        )
        self.event_flush_failures = Counter(
            "neffcache_event_flush_failures", "Flushes of cache events that failed (their events kept)",
            registry=self.registry,
        )
        self.events_lost = Counter(
            "neffcache_events_dropped", "Cache events dropped after flushes kept failing", registry=self.registry,
        )
        # Compile seconds the hits of lookups and compile requests saved (each hit saves its
        # artifact's compile time: /v1/stats' compile_seconds_saved, counted as it happens).
        self.seconds_saved = Counter(
            "neffcache_compile_seconds_saved", "Compile seconds saved by cache hits (lookups and compile requests)",
            ["target"], registry=self.registry,
        )
        # Bytes of the artifact files downloads asked for (served by this process, or by S3
        # through the presigned URL it redirected to).
        self.downloaded_bytes = Counter(
            "neffcache_download_bytes", "Bytes of the artifact files downloaded", ["target"], registry=self.registry,
        )
        # Every answer by its HTTP status (service.request_log): 5xx are the storage, database and
        # internal errors (503 storage_unavailable / not_ready, 502 corrupt_object, 500).
        self.responses = Counter(
            "neffcache_responses", "HTTP answers by status", ["status"], registry=self.registry,
        )
        # The label values an alert watches start at 0, so that rate() sees their first increase.
        for found_by in CORRUPT_FOUND_BY:
            self.corrupt_objects.labels(found_by)
        for status in WATCHED_STATUSES:
            self.responses.labels(str(status))
        self.registry.register(_DatabaseCollector(db, settings))

    def cache_request(self, kind: str, outcome: str, target: str) -> None:
        self.cache_requests.labels(kind, outcome, target).inc()

    def compile_seconds_saved(self, target: str, seconds: float) -> None:
        self.seconds_saved.labels(target).inc(seconds)

    def downloaded(self, target: str, size: int) -> None:
        self.downloaded_bytes.labels(target).inc(size)

    def response(self, status: int) -> None:
        self.responses.labels(str(status)).inc()

    def hit_served(self, kind: str, source: str) -> None:
        self.hits_served.labels(kind, source).inc()

    def corrupt_object(self, found_by: str) -> None:
        self.corrupt_objects.labels(found_by).inc()

    def events_flushed(self, count: int, lag_s: float) -> None:
        self.event_batch.observe(count)
        self.event_lag.set(lag_s)

    def event_flush_failed(self) -> None:
        self.event_flush_failures.inc()

    def events_dropped(self, count: int) -> None:
        self.events_lost.inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
