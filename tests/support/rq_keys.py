"""The Redis keys a test run leaves, and their removal when the run ends.

A run's stack names every queue `<queue_prefix>:...` (tests/conftest.py gives each run its own
prefix), so everything RQ wrote for the run is found from that prefix alone, also on a Redis
that other runs share:
  - keys naming one of its queues: the queues, their registries (wip, finished, failed, ...),
    the per-queue worker sets;
  - keys of its jobs, the RQ jobs whose origin is one of its queues: the job hash, its results
    stream, executions, dependents;
  - keys of its workers, those that served its queues;
  - its members of RQ's shared sets (rq:queues, rq:workers), which are other runs' too.
"""

from __future__ import annotations

from typing import Any

SHARED_SETS = ("rq:queues", "rq:workers")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def run_leftovers(redis: Any, queue_prefix: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(the run's keys, the run's members of the shared sets) still in Redis."""
    mine = f"{queue_prefix}:"
    keys = [_text(k) for k in redis.scan_iter(match="rq:*", count=1000)]
    found: set[str] = set()
    owners: set[str] = set()  # RQ ids of the run's jobs and names of its workers
    for key in keys:
        if key in SHARED_SETS:
            continue
        if mine in key:
            found.add(key)
            continue
        kind, _, rest = key.removeprefix("rq:").partition(":")
        if kind not in ("job", "worker") or not rest or ":" in rest or _text(redis.type(key)) != "hash":
            continue
        if kind == "job":
            origin = redis.hget(key, "origin")
            if origin is not None and _text(origin).startswith(mine):
                owners.add(rest)
        elif any(q.startswith(mine) for q in _text(redis.hget(key, "queues") or b"").split(",")):
            owners.add(rest)
    found.update(k for k in keys if k not in SHARED_SETS and owners & set(k.split(":")))
    members = [
        (name, member)
        for name in SHARED_SETS
        for member in map(_text, redis.smembers(name))
        if mine in member or member.rsplit(":", 1)[-1] in owners
    ]
    return sorted(found), sorted(members)


def delete_run_keys(redis: Any, queue_prefix: str) -> int:
    """Delete everything the run left; how many keys and set members went."""
    keys, members = run_leftovers(redis, queue_prefix)
    for start in range(0, len(keys), 500):
        redis.delete(*keys[start:start + 500])
    for name, member in members:
        redis.srem(name, member)
    return len(keys) + len(members)
