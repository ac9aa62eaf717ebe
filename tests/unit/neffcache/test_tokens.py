"""neffcache/tokens.py: token lifetimes as written on the command line, expiry and last use."""

from __future__ import annotations

from datetime import timedelta

import pytest

from neffcache import tokens
from neffcache.db.models import ApiToken, utcnow
from neffcache.errors import InvalidParameter


def test_parse_duration() -> None:
    assert tokens.parse_duration("30d") == timedelta(days=30)
    assert tokens.parse_duration("12h") == timedelta(hours=12)
    assert tokens.parse_duration("90m") == timedelta(minutes=90)
    assert tokens.parse_duration("45s") == timedelta(seconds=45)
    assert tokens.parse_duration("2w") == timedelta(weeks=2)
    assert tokens.parse_duration(" 1D12h ") == timedelta(days=1, hours=12)
    for bad in ("", "30", "d", "30x", "0d", "-1d", "1d 2h", "1.5d", "99999999999d"):
        with pytest.raises(InvalidParameter, match="^expires-in: "):
            tokens.parse_duration(bad)


def test_expired_and_record_use() -> None:
    now = utcnow()
    row = ApiToken(name="ci", token_sha256="0" * 64, scope="write", created_at=now)
    assert not tokens.expired(row, now)
    row.expires_at = now + timedelta(seconds=1)
    assert not tokens.expired(row, now) and tokens.expired(row, now + timedelta(seconds=1))

    assert tokens.record_use(row, now) and row.last_used_at == now
    assert not tokens.record_use(row, now + timedelta(seconds=59)) and row.last_used_at == now
    later = now + tokens.LAST_USED_RESOLUTION
    assert tokens.record_use(row, later) and row.last_used_at == later


@pytest.mark.parametrize(("held", "needed", "allowed"), [
    ("read", "read", True), ("read", "write", False), ("write", "write", True), ("write", "publish", False),
    ("publish", "write", True), ("publish", "publish", True), ("publish", "admin", False), ("admin", "publish", True),
])
def test_scopes_are_ordered_and_publish_is_above_write(held: str, needed: str, allowed: bool) -> None:
    assert tokens.scope_allows(held, needed) is allowed


@pytest.mark.parametrize(("held", "namespace", "allowed"), [
    (["team-a"], "team-a", True), (["team-a"], "team-b", False), (["team-a", "team-b"], "team-b", True),
    (["*"], "anything", True), (["team-a"], "*", False), (["team-a"], "team-a ", False), ([], "default", False),
])
def test_namespace_allows(held: list[str], namespace: str, allowed: bool) -> None:
    assert tokens.namespace_allows(held, namespace) is allowed


@pytest.mark.parametrize(("scope", "given", "stored"), [
    ("read", None, ["*"]), ("admin", None, ["*"]), ("write", ["b", "a", "b"], ["a", "b"]),
    ("publish", ["default"], ["default"]),
])
def test_checked_namespaces(scope: str, given: list[str] | None, stored: list[str]) -> None:
    assert tokens.checked_namespaces(scope, given) == stored


@pytest.mark.parametrize(("scope", "given", "message"), [
    ("admin", ["a"], "an admin token acts in every namespace"),
    ("write", [], "at least one namespace"),
    ("write", ["*"], "'*' is not a namespace"),
    ("write", ["A"], "'A' is not a namespace"),
    ("write", ["a\x00"], "is not a namespace"),
    ("write", ["x" * 65], "is not a namespace"),
])
def test_checked_namespaces_refuses(scope: str, given: list[str], message: str) -> None:
    with pytest.raises(InvalidParameter, match="^namespace: ") as refused:
        tokens.checked_namespaces(scope, given)
    assert message in refused.value.detail
