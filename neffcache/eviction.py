"""Which artifacts the GC evicts, and why: a pure function of what is stored and the policy.

No I/O, standard library only, so the order is tested table by table
(tests/unit/neffcache/test_eviction.py) and the GC (neffcache/gc.py) only carries it out.

The rules, applied in this order to the artifacts that are not pinned:
1. `ttl`: unused (no hit, no download; never used counts from publication) for longer than
   the TTL, whatever the quota says.
2. `namespace_quota`: in each namespace over its quota, the least recently used first, until
   the namespace is within it.
3. `quota`: over the deployment's quota, the least recently used first across namespaces,
   until the deployment is within it.
Ties in last use go to the larger artifact first (it frees more for the same loss of recency),
then by key, so two runs over the same state plan the same evictions. A pinned artifact is never
evicted: when the pinned artifacts alone exceed a quota, eviction stops there and the plan says
so (`blocked`), with the bytes that stay over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


class Reason(StrEnum):
    TTL = "ttl"
    NAMESPACE_QUOTA = "namespace_quota"
    QUOTA = "quota"


@dataclass(frozen=True)
class Candidate:
    """An artifact as the GC sees it: its files' bytes, its last use, whether a pin holds it."""

    key: str
    namespace: str
    size: int
    last_used: datetime
    pinned: bool = False


@dataclass(frozen=True)
class Eviction:
    key: str
    namespace: str
    size: int
    last_used: datetime
    reason: Reason


@dataclass(frozen=True)
class Policy:
    quota_bytes: int | None = None
    namespace_quota_bytes: Mapping[str, int] = field(default_factory=dict)
    ttl_s: float | None = None


@dataclass(frozen=True)
class Blocked:
    """A quota that evicting every unpinned artifact could not meet: the deployment's (namespace
    None) or a namespace's."""

    namespace: str | None
    quota_bytes: int
    kept_bytes: int
    pinned_bytes: int

    def describe(self) -> str:
        where = "the deployment" if self.namespace is None else f"namespace {self.namespace!r}"
        return (f"{where} keeps {self.kept_bytes} bytes, over its quota of {self.quota_bytes}: "
                f"{self.pinned_bytes} bytes of it are pinned, and pinned artifacts are never evicted")


@dataclass(frozen=True)
class Plan:
    evictions: list[Eviction]
    stored_bytes: int  # every artifact's bytes before the plan
    pinned_bytes: int
    blocked: list[Blocked]

    @property
    def evicted_bytes(self) -> int:
        return sum(e.size for e in self.evictions)

    @property
    def kept_bytes(self) -> int:
        return self.stored_bytes - self.evicted_bytes


def _lru_order(candidate: Candidate) -> tuple[datetime, int, str]:
    return candidate.last_used, -candidate.size, candidate.key


def plan_evictions(candidates: Iterable[Candidate], policy: Policy, now: datetime) -> Plan:
    """The evictions `policy` asks for at `now`, in the order they are to be made."""
    everything = list(candidates)
    stored = sum(c.size for c in everything)
    pinned = sum(c.size for c in everything if c.pinned)
    evictable = sorted((c for c in everything if not c.pinned), key=_lru_order)
    evictions: list[Eviction] = []
    gone: set[str] = set()

    def evict(candidate: Candidate, reason: Reason) -> None:
        evictions.append(Eviction(candidate.key, candidate.namespace, candidate.size, candidate.last_used, reason))
        gone.add(candidate.key)

    if policy.ttl_s is not None:
        unused_since = now - timedelta(seconds=policy.ttl_s)
        for candidate in evictable:
            if candidate.last_used < unused_since:
                evict(candidate, Reason.TTL)

    blocked: list[Blocked] = []
    for namespace, quota in sorted(policy.namespace_quota_bytes.items()):
        members = [c for c in everything if c.namespace == namespace]
        over = _fill_to_quota(members, quota, gone, lambda c: evict(c, Reason.NAMESPACE_QUOTA))
        if over:
            blocked.append(Blocked(namespace, quota, over, sum(c.size for c in members if c.pinned)))

    if policy.quota_bytes is not None:
        over = _fill_to_quota(everything, policy.quota_bytes, gone, lambda c: evict(c, Reason.QUOTA))
        if over:
            blocked.append(Blocked(None, policy.quota_bytes, over, pinned))
    return Plan(evictions, stored, pinned, blocked)


def _fill_to_quota(members: list[Candidate], quota: int, gone: set[str], evict: Callable[[Candidate], None]) -> int:
    """Evict `members` (least recently used first, skipping the pinned and those already gone)
    until they hold at most `quota` bytes; the bytes that stay (0 when within the quota)."""
    kept = sum(c.size for c in members if c.key not in gone)
    for candidate in sorted(members, key=_lru_order):
        if kept <= quota:
            break
        if candidate.pinned or candidate.key in gone:
            continue
        evict(candidate)
        kept -= candidate.size
    return kept if kept > quota else 0
