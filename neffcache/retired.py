"""What the GC deleted, kept as counts, so that the metrics counted from the database never go
down: `neffcache_compiles_total` counts finished jobs and `neffcache_compile_duration_seconds`
published artifacts, and the GC deletes old jobs and evicts artifacts. A Prometheus counter that
falls reads as a restart, and `rate()` jumps for a window; adding back what was retired keeps
each series monotonic.

Rows of `retired_counts`: ("compiles", "<state>/<failure class or ''>") with the jobs deleted,
and ("compile_duration", "<the first bucket's bound it falls in, or +Inf>") with the evicted
artifacts' count and summed compile seconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from neffcache.db.models import RetiredCount

# The compile-duration histogram's bucket bounds, in seconds (neffcache_compile_duration_seconds).
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
COMPILES, COMPILE_DURATION = "compiles", "compile_duration"


def _add(session: Session, name: str, label: str, count: int, total: float = 0.0) -> None:
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(RetiredCount).values(name=name, label=label, count=count, total=total)
                    .on_conflict_do_update(index_elements=["name", "label"],
                                           set_={"count": RetiredCount.count + count,
                                                 "total": RetiredCount.total + total}))


def retire_jobs(session: Session, finished: Iterable[tuple[str, str | None]]) -> None:
    """Count deleted finished jobs, (state, failure class), in the deleting transaction."""
    for (state, failure), count in sorted(Counter((s, f or "") for s, f in finished).items()):
        _add(session, COMPILES, f"{state}/{failure}", count)


def bucket_of(seconds: float) -> str:
    return next((str(b) for b in DURATION_BUCKETS if seconds <= b), "+Inf")


def retire_artifact(session: Session, compile_seconds: float) -> None:
    """Count an evicted artifact's compile time, in the evicting transaction."""
    _add(session, COMPILE_DURATION, bucket_of(compile_seconds), 1, compile_seconds)


def retired_compiles(session: Session) -> dict[tuple[str, str], int]:
    """{(state, failure class or ''): jobs deleted}."""
    rows = session.execute(select(RetiredCount.label, RetiredCount.count).where(RetiredCount.name == COMPILES))
    return {tuple(label.split("/", 1)): int(count) for label, count in rows}  # type: ignore[misc]


def retired_durations(session: Session) -> tuple[list[int], int, float]:
    """The evicted artifacts as the histogram counts them: (cumulative count per bucket of
    DURATION_BUCKETS, their count, their summed seconds)."""
    rows = session.execute(select(RetiredCount.label, RetiredCount.count, RetiredCount.total)
                           .where(RetiredCount.name == COMPILE_DURATION))
    per_bucket = {label: (int(count), float(total)) for label, count, total in rows}
    cumulative, running = [], 0
    for bound in DURATION_BUCKETS:
        running += per_bucket.get(str(bound), (0, 0.0))[0]
        cumulative.append(running)
    return cumulative, sum(c for c, _ in per_bucket.values()), sum(t for _, t in per_bucket.values())
