"""History benchmark: what `/v1/stats` and a GC pass cost as the cache and its history grow,
before and after the cache events older than a day are rolled up into hourly counts
(neffcache.rollup, neffcache.gc).

    .venv/bin/python bench/history_scale.py [--artifacts 10000] [--events 1000000]
        [--baseline-artifacts 1000] [--baseline-events 100000] [--days 14] [--rounds 5]
        [--batch-size 10000] [--quota-fraction 0.9] [--postgres URL] [--json]

What it sets up, for each size (the baseline, then the big one) and each database (the embedded
SQLite in a temp folder; with --postgres URL also a database of its own on that server,
`neffcache_bench_<random>`, CREATEd, migrated and DROPped at the end, bench/bench_databases.py):
  - N artifacts (each with its job, one file, its blob and its usage row) over two compilers, two
    targets and two namespaces, inserted with SQL;
  - M cache events over the last --days days, in time order (so ids follow time, as the event
    writer leaves them): nine in ten from rollouts of a deployment (its 100 artifacts, ten
    models: 1 to 32 pods of one of its two tokens start at once and each looks up and downloads
    one model's artifacts), the rest single lookups, compile requests and downloads from CI, a
    laptop and anonymous callers on any artifact (`traffic`); bulk-inserted through the driver's
    executemany exactly as the service's event writer inserts them (service.events);
  - the service in process (its ASGI app through Starlette's TestClient: no network, no Redis).

What it measures, one function per operation (`measure_*`), in this order on each database:
  - stats before: GET /v1/stats, the median of --rounds answers after one unmeasured;
  - roll-up:      roll_up_events(before = now - 1 day), timed once; how many events it moved and
                  how many hourly buckets hold them;
  - stats after:  GET /v1/stats again (the same answer, checked: the script fails if it differs);
  - gc:           a full GC pass with a quota of --quota-fraction of what is stored (so it evicts
                  the least recently used tenth): its dry run (the plan alone), the pass itself
                  (plan, evictions one transaction each, blob and job sweeps, the store's listing
                  for orphans, the roll-up's remainder), and the pass a grace period later that
                  deletes the evicted artifacts' marked objects.
On Postgres each phase starts after VACUUM ANALYZE (what autovacuum leaves a while later: the
planner's statistics of the new rows, and the dead rows of the roll-up's deletes cleared).

It prints each size's figures and the ratios big / baseline (about 10 for something that grows
with history: the big size has ten times the baseline's artifacts and events) and after / before.
It asserts nothing about timings; it fails only if /v1/stats answers differently after the roll-up.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench_databases import each_database  # bench/, this script's folder
from sqlalchemy import func, insert, select, text

from neffcache import gc
from neffcache.db import migrate
from neffcache.db.models import Artifact, ArtifactFile, ArtifactUsage, Blob, CacheEventHour, Job, utcnow
from neffcache.db.session import Database
from neffcache.rollup import roll_up_events
from neffcache.service.events import Event, _insert_events  # the event writer's own bulk insert
from neffcache.settings import Settings
from neffcache.storage import ObjectStore, open_store

ROLL_UP_AGE = timedelta(days=1)
COMPILERS = (("neuronx-cc", "2.20.10051.0+c3e72c4a"), ("neuronx-cc", "2.21.18209.0+043b1bf7"))
TARGETS = ("trn1", "inf2")
NAMESPACES = ("default", "team-b")
# A deployment's lock file: what its pods look up and download over and over (most of the traffic);
# the rest is spread over every artifact, from CI, laptops and anonymous callers.
DEPLOYED, DEPLOYED_SHARE, MODEL_ARTIFACTS = 100, 0.9, 10
POD_CALLERS = ("pods-prod", "pods-canary")
OTHER_CALLERS = ("ci", "laptop", None)
RUNTIME = "2.34.10.0"
EVENTS_PER_TRANSACTION = 50_000


@dataclass(frozen=True)
class Size:
    name: str
    artifacts: int
    events: int


@dataclass
class Figures:
    """One size on one database: what it held and what each operation took."""

    artifacts: int
    events: int
    fill_s: float = 0.0
    stats_before_s: float = 0.0
    roll_up_s: float = 0.0
    rolled_up: int = 0
    buckets: int = 0
    stats_after_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)  # later operations (the GC pass, ...)


def key_of(i: int) -> str:
    return hashlib.sha256(f"bench-artifact-{i}".encode()).hexdigest()


def artifact_toolchain(i: int) -> tuple[str, tuple[str, str], str]:
    """(namespace, compiler, target) of artifact i."""
    return NAMESPACES[i % 10 == 0], COMPILERS[i % 3 == 0], TARGETS[i % 4 == 0]


def fill(db: Database, size: Size, days: int, seed: int = 7) -> float:
    """The size's artifacts and events in `db`; returns the seconds it took."""
    start = time.perf_counter()
    now = utcnow()
    rng = random.Random(seed)
    artifact_rows, file_rows, blob_rows, job_rows = [], [], [], []
    for i in range(size.artifacts):
        namespace, (compiler, version), target = artifact_toolchain(i)
        key, model, neff = key_of(i), "sha256:" + key_of(-i - 1), "sha256:" + key_of(10**9 + i)
        manifest = {"key_version": 1, "namespace": namespace, "model": {"format": "hlo", "digest": model},
                    "inputs": [{"name": "x", "shape": [1, 128], "dtype": "int64"}], "target": target,
                    "compiler": {"name": compiler, "version": version, "flags": []},
                    "runtime": {"name": "neuron-runtime", "version": RUNTIME}}
        made = now - timedelta(days=days, seconds=i)
        job_id = str(uuid.UUID(int=i + 1))
        artifact_rows.append({"key": key, "manifest": manifest, "namespace": namespace, "model_digest": model,
                              "target": target, "compiler_name": compiler, "compiler_version": version,
                              "runtime_version": RUNTIME, "compile_seconds": 600.0, "job_id": job_id,
                              "created_at": made, "origin": "farm", "origin_token": "ci"})
        file_rows.append({"artifact_key": key, "name": "model.neff", "digest": neff, "size": 1 << 20})
        blob_rows.append({"digest": model, "size": 1 << 20, "created_at": made})
        job_rows.append({"id": job_id, "key": key, "manifest": manifest, "namespace": namespace, "queue": "bench",
                         "state": "succeeded", "attempts": 1, "max_attempts": 3, "cancel_requested": False,
                         "created_at": made, "finished_at": made})
    with db.session() as session:
        for table, rows in ((Blob, blob_rows), (Job, job_rows), (Artifact, artifact_rows),
                            (ArtifactFile, file_rows)):
            session.execute(insert(table), rows)
    usage: dict[int, list[Any]] = {}
    span_s = days * 24 * 3600.0
    made = traffic(size, span_s, rng)
    for first in range(0, len(made), EVENTS_PER_TRANSACTION):
        batch = []
        for offset, i, caller, kind, outcome in made[first:first + EVENTS_PER_TRANSACTION]:
            namespace, (compiler, version), target = artifact_toolchain(i)
            at = now - timedelta(seconds=span_s - offset)
            batch.append(Event(kind, outcome, key_of(i), namespace, target, compiler, version, caller,
                               600.0 if outcome == "hit" and kind != "download" else 0.0, at))
            if outcome == "hit":
                counts = usage.setdefault(i, [0, 0, at])
                counts[kind == "download"] += 1
                counts[2] = at
        with db.session() as session:
            _insert_events(session, batch)
    with db.session() as session:
        session.execute(insert(ArtifactUsage), [{"key": key_of(i), "lookup_hits": n, "downloads": d,
                                                 "last_used_at": last} for i, (n, d, last) in usage.items()])
    return time.perf_counter() - start


def traffic(size: Size, span_s: float, rng: random.Random) -> list[tuple[float, int, str | None, str, str]]:
    """size.events events, (seconds into the span, artifact, caller, kind, outcome), in time order.
    Nine in ten come from rollouts: 1 to 32 pods of one token start at once, and each looks up
    and downloads the artifacts of one model of the deployment (a miss, one lookup in twenty, is
    followed by a compile request); the rest are single requests of any kind, on any artifact."""
    made: list[tuple[float, int, str | None, str, str]] = []
    deployed = min(DEPLOYED, size.artifacts)
    while len(made) < size.events:
        at = rng.random() * span_s
        if rng.random() >= DEPLOYED_SHARE:
            roll = rng.random()
            kind = "lookup" if roll < 0.6 else "compile" if roll < 0.7 else "download"
            made.append((at, rng.randrange(size.artifacts), rng.choice(OTHER_CALLERS), kind,
                         "miss" if kind != "download" and rng.random() < 0.1 else "hit"))
            continue
        caller, first = rng.choice(POD_CALLERS), rng.randrange(0, deployed, MODEL_ARTIFACTS)
        for pod in range(rng.randint(1, 32)):
            for i in range(first, min(first + MODEL_ARTIFACTS, deployed)):
                when = min(at + pod + rng.random(), span_s)
                if rng.random() < 0.05:
                    made += [(when, i, caller, "lookup", "miss"), (when, i, caller, "compile", "miss")]
                else:
                    made += [(when, i, caller, "lookup", "hit"), (when, i, caller, "download", "hit")]
    del made[size.events:]
    made.sort()
    return made


def settle(db: Database) -> None:
    """On Postgres, VACUUM ANALYZE: what autovacuum leaves a while later (see the docstring)."""
    if db.engine.dialect.name != "postgresql":
        return
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))


def measure_stats(client: Any, rounds: int) -> tuple[float, dict[str, Any]]:
    """GET /v1/stats: (the median seconds of `rounds` answers after one unmeasured, the answer)."""
    answer = client.get("/v1/stats").json()
    took = []
    for _ in range(rounds):
        start = time.perf_counter()
        r = client.get("/v1/stats")
        took.append(time.perf_counter() - start)
        assert r.status_code == 200, r.text
    return statistics.median(took), answer


def measure_roll_up(db: Database, batch_size: int) -> tuple[float, int, int]:
    """roll_up_events of everything older than a day: (seconds, events moved, buckets after)."""
    start = time.perf_counter()
    moved = roll_up_events(db, utcnow() - ROLL_UP_AGE, batch_size=batch_size)
    took = time.perf_counter() - start
    with db.session() as session:
        buckets = session.scalar(select(func.count()).select_from(CacheEventHour)) or 0
    return took, moved, buckets


def measure_gc(db: Database, store: ObjectStore, settings: Settings, quota_fraction: float) -> dict[str, float]:
    """A full GC pass (neffcache.gc) with a quota of `quota_fraction` of what is stored, so it
    evicts the least recently used rest: a dry run (the plan alone), the pass that evicts and
    marks, and the pass a grace period later that deletes the marked objects. Seconds of each,
    and how many it evicted."""
    with db.session() as session:
        stored = sum(c.size for c in gc.candidates(session, utcnow()))
    settings = settings.model_copy(update={"gc_quota_bytes": int(stored * quota_fraction)})
    start = time.perf_counter()
    dry = gc.run_gc(db, store, settings, holder="bench", dry_run=True)
    dry_s = time.perf_counter() - start
    start = time.perf_counter()
    done = gc.run_gc(db, store, settings, holder="bench")
    pass_s = time.perf_counter() - start
    assert len(done.evicted) == len(dry.evicted), (len(done.evicted), len(dry.evicted))
    start = time.perf_counter()
    later = gc.run_gc(db, store, settings, holder="bench", now=utcnow() + timedelta(seconds=settings.gc_grace_s + 1))
    delete_s = time.perf_counter() - start
    return {"gc_dry_run_s": dry_s, "gc_pass_s": pass_s, "gc_delete_pass_s": delete_s,
            "gc_evicted": float(len(done.evicted)), "gc_marks_deleted": float(later.objects_deleted)}


def bench_size(url: str, work: Path, size: Size, args: argparse.Namespace, say: Callable[[str], None]) -> Figures:
    from fastapi.testclient import TestClient

    from neffcache.service.app import create_app

    migrate.upgrade(url)
    settings = Settings(database_url=url, storage_url=f"file://{work / 'objects'}", redis_url="redis://127.0.0.1:1/0",
                        auth_required=False, hot_cache_s=0.0)
    db = Database(url)
    figures = Figures(size.artifacts, size.events)
    try:
        figures.fill_s = fill(db, size, args.days)
        say(f"   {size.name}: {size.artifacts:,} artifacts and {size.events:,} events in {figures.fill_s:.1f} s")
        with TestClient(create_app(settings)) as client:
            settle(db)
            figures.stats_before_s, before = measure_stats(client, args.rounds)
            figures.roll_up_s, figures.rolled_up, figures.buckets = measure_roll_up(db, args.batch_size)
            settle(db)
            figures.stats_after_s, after = measure_stats(client, args.rounds)
            # The GC passes, on the rolled-up history (nothing is left to roll up: it is the rest).
            figures.extra = measure_gc(db, open_store(settings), settings, args.quota_fraction)
        say(f"   {size.name}: stats {figures.stats_before_s * 1000:.1f} ms; rolled up {figures.rolled_up:,} events "
            f"into {figures.buckets:,} buckets in {figures.roll_up_s:.1f} s; "
            f"stats {figures.stats_after_s * 1000:.1f} ms; gc dry run {figures.extra['gc_dry_run_s']:.2f} s, "
            f"pass {figures.extra['gc_pass_s']:.2f} s ({figures.extra['gc_evicted']:.0f} evicted), "
            f"deleting pass {figures.extra['gc_delete_pass_s']:.2f} s")
        if after != before:
            raise SystemExit(f"{size.name}: /v1/stats answered differently after the roll-up:\n{before}\n{after}")
    finally:
        db.dispose()
    return figures


ROWS = (("stats before roll-up", "stats_before_s", 1000, "ms"), ("roll-up", "roll_up_s", 1, "s"),
        ("stats after roll-up", "stats_after_s", 1000, "ms"))


def print_summary(label: str, baseline: Figures, big: Figures, say: Callable[[str], None]) -> None:
    say(f"\n{label}: baseline {baseline.artifacts:,} artifacts / {baseline.events:,} events, "
        f"big {big.artifacts:,} / {big.events:,}")
    say(f"{'':<22}{'baseline':>12}{'big':>12}{'big / baseline':>16}")
    for name, attr in (("events rolled up", "rolled_up"), ("hourly buckets", "buckets")):
        b, g = getattr(baseline, attr), getattr(big, attr)
        say(f"{name:<22}{b:>12,}{g:>12,}{g / b:>16.2f}")
    for name, attr, scale, unit in ROWS:
        b, g = getattr(baseline, attr), getattr(big, attr)
        say(f"{name + ' ' + unit:<22}{b * scale:>12.1f}{g * scale:>12.1f}{g / b:>16.2f}")
    for name, attr in (("gc dry run s", "gc_dry_run_s"), ("gc pass s", "gc_pass_s"),
                       ("gc deleting pass s", "gc_delete_pass_s")):
        b, g = baseline.extra[attr], big.extra[attr]
        say(f"{name:<22}{b:>12.2f}{g:>12.2f}{g / b:>16.2f}")
    for which, f in (("baseline", baseline), ("big", big)):
        say(f"stats after / before, {which}: {f.stats_after_s / f.stats_before_s:.2f}")


def sizes(args: argparse.Namespace) -> tuple[Size, Size]:
    return (Size("baseline", args.baseline_artifacts, args.baseline_events), Size("big", args.artifacts, args.events))


def bench_all(work: Path, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, dict[str, Figures]]:
    """{database label: {size name: figures}}, each size on a database of its own."""
    measured: dict[str, dict[str, Figures]] = {}
    for size in sizes(args):
        for label, url, folder in each_database(work / size.name, args.postgres, say):
            folder.mkdir(parents=True, exist_ok=True)
            say(f"\n== {label}, {size.name}")
            measured.setdefault(label, {})[size.name] = bench_size(url, folder, size, args, say)
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifacts", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--baseline-artifacts", type=int, default=1_000)
    parser.add_argument("--baseline-events", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=14, help="the events span this many days (all but the last "
                                                              "one are rolled up)")
    parser.add_argument("--rounds", type=int, default=5, help="measured /v1/stats answers per phase")
    parser.add_argument("--batch-size", type=int, default=10_000, help="events per roll-up transaction")
    parser.add_argument("--quota-fraction", type=float, default=0.9,
                        help="the GC pass's quota, as a fraction of what is stored (it evicts the rest)")
    parser.add_argument("--postgres", metavar="URL", help="also on a database of its own on this server")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON at the end")
    args = parser.parse_args()

    def say(line: str) -> None:
        print(line, flush=True)

    started = time.perf_counter()
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="neffcache-history-") as tmp:
        for label, figures in bench_all(Path(tmp), args, say).items():
            print_summary(label, figures["baseline"], figures["big"], say)
            out[label] = {name: asdict(f) for name, f in figures.items()}
    say(f"\ntook {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
