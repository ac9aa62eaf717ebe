"""The eviction plan, table by table: TTL, namespace quotas, the deployment's quota, LRU order,
pins, and quotas that pinned artifacts alone exceed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from neffcache.eviction import Blocked, Candidate, Policy, Reason, plan_evictions

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
DAY = 24 * 3600.0


def art(key: str, size: int, days_unused: float, namespace: str = "default", pinned: bool = False) -> Candidate:
    return Candidate(key, namespace, size, NOW - timedelta(days=days_unused), pinned)


CASES = [
    # (what, candidates, policy, expected evictions [(key, reason)], expected blocked)
    ("no policy evicts nothing",
     [art("a", 10, 900), art("b", 10, 1)], Policy(), [], []),
    ("within the quota evicts nothing",
     [art("a", 10, 9), art("b", 10, 1)], Policy(quota_bytes=20), [], []),
    ("over the quota: the least recently used first, until within it",
     [art("new", 10, 1), art("old", 10, 9), art("mid", 10, 5)], Policy(quota_bytes=15),
     [("old", Reason.QUOTA), ("mid", Reason.QUOTA)], []),
    ("equal last use: the larger first, then by key",
     [art("b", 5, 3), art("a", 5, 3), art("big", 50, 3)], Policy(quota_bytes=10),
     [("big", Reason.QUOTA)], []),
    ("a pinned artifact is skipped however old",
     [art("pinned", 10, 99, pinned=True), art("old", 10, 9), art("new", 10, 1)], Policy(quota_bytes=20),
     [("old", Reason.QUOTA)], []),
    ("pinned alone over the quota: every unpinned goes, and the plan says it is blocked",
     [art("p1", 30, 9, pinned=True), art("p2", 30, 1, pinned=True), art("u", 5, 0)], Policy(quota_bytes=40),
     [("u", Reason.QUOTA)], [Blocked(None, 40, 60, 60)]),
    ("everything pinned and over: nothing goes, blocked",
     [art("p", 30, 9, pinned=True)], Policy(quota_bytes=10), [], [Blocked(None, 10, 30, 30)]),
    ("TTL: unused longer than it goes, quota or not",
     [art("stale", 1, 31), art("fresh", 1, 29)], Policy(ttl_s=30 * DAY), [("stale", Reason.TTL)], []),
    ("TTL never takes a pinned artifact",
     [art("stale", 1, 31, pinned=True)], Policy(ttl_s=30 * DAY), [], []),
    ("TTL first, then the quota counts what is left",
     [art("stale", 10, 40), art("old", 10, 20), art("new", 10, 1)], Policy(quota_bytes=15, ttl_s=30 * DAY),
     [("stale", Reason.TTL), ("old", Reason.QUOTA)], []),
    ("a namespace over its quota loses its own least recently used, not another's",
     [art("a-old", 10, 9, "a"), art("a-new", 10, 1, "a"), art("b-oldest", 10, 99, "b")],
     Policy(namespace_quota_bytes={"a": 10}), [("a-old", Reason.NAMESPACE_QUOTA)], []),
    ("namespace quota first, then the deployment's counts what is left",
     [art("a-old", 10, 9, "a"), art("a-new", 10, 1, "a"), art("b-old", 10, 5, "b"), art("b-new", 10, 2, "b")],
     Policy(quota_bytes=20, namespace_quota_bytes={"a": 10}),
     [("a-old", Reason.NAMESPACE_QUOTA), ("b-old", Reason.QUOTA)], []),
    ("a namespace blocked by its pins: its unpinned go, the others are untouched",
     [art("a-pin", 20, 9, "a", pinned=True), art("a-u", 5, 1, "a"), art("b", 50, 99, "b")],
     Policy(namespace_quota_bytes={"a": 10}), [("a-u", Reason.NAMESPACE_QUOTA)], [Blocked("a", 10, 20, 20)]),
    ("a namespace with a quota and nothing stored",
     [art("b", 5, 1, "b")], Policy(namespace_quota_bytes={"a": 1}), [], []),
    ("an empty cache",
     [], Policy(quota_bytes=0, ttl_s=1.0), [], []),
    ("a quota of zero evicts every unpinned artifact",
     [art("x", 1, 1), art("y", 1, 2), art("p", 1, 3, pinned=True)], Policy(quota_bytes=0),
     [("y", Reason.QUOTA), ("x", Reason.QUOTA)], [Blocked(None, 0, 1, 1)]),
]


@pytest.mark.parametrize(("candidates", "policy", "evicted", "blocked"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_plan(candidates: list[Candidate], policy: Policy, evicted: list[tuple[str, Reason]],
              blocked: list[Blocked]) -> None:
    plan = plan_evictions(candidates, policy, NOW)
    assert [(e.key, e.reason) for e in plan.evictions] == evicted
    assert plan.blocked == blocked
    assert plan.stored_bytes == sum(c.size for c in candidates)
    assert plan.pinned_bytes == sum(c.size for c in candidates if c.pinned)
    assert plan.kept_bytes == plan.stored_bytes - sum(c.size for c in candidates if c.key in dict(evicted))
    assert not any(c.pinned for c in candidates if c.key in dict(evicted))


def test_the_plan_does_not_depend_on_the_order_candidates_come_in() -> None:
    candidates = [art(f"k{i}", i % 7 + 1, i % 5, f"ns{i % 3}", pinned=i % 11 == 0) for i in range(60)]
    policy = Policy(quota_bytes=80, namespace_quota_bytes={"ns1": 20}, ttl_s=3.5 * DAY)
    forward = plan_evictions(candidates, policy, NOW)
    backward = plan_evictions(list(reversed(candidates)), policy, NOW)
    assert forward == backward
    assert forward.kept_bytes <= 80


def test_blocked_says_what_stays_over_and_why() -> None:
    assert Blocked(None, 10, 30, 30).describe() == (
        "the deployment keeps 30 bytes, over its quota of 10: 30 bytes of it are pinned, "
        "and pinned artifacts are never evicted")
    assert Blocked("team-a", 10, 30, 25).describe().startswith("namespace 'team-a' keeps 30 bytes")
