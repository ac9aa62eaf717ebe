"""service/auth.py in process (the real app, SQLite made by the migrations, nothing started): the
bootstrap admin token ends once an admin token exists, expired tokens are refused saying so, and
a token's last use is recorded at most once a minute."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from neffcache import invalidation, tokens
from neffcache.db.models import ApiToken, Job, utcnow
from neffcache.db.session import Database
from neffcache.errors import Forbidden
from neffcache.service.app import create_app
from neffcache.service.auth import Grant
from tests.support.in_process import migrated_sqlite, service_settings

BOOTSTRAP = "nfc_test-auth-bootstrap"


@dataclass
class Service:
    client: TestClient
    db: Database

    def get(self, path: str, token: str) -> tuple[int, dict]:
        r = self.client.get(path, headers={"Authorization": f"Bearer {token}"})
        return r.status_code, r.json()

    def create(self, name: str, scope: str, expires_in: timedelta | None = None) -> str:
        with self.db.session() as session:
            return tokens.create_token(session, name, scope, expires_in)

    def row(self, name: str) -> ApiToken:
        with self.db.session() as session:
            row = session.get(ApiToken, name)
            assert row is not None
            return row

    def set(self, name: str, **values: object) -> None:
        with self.db.session() as session:
            row = session.get(ApiToken, name)
            for field, value in values.items():
                setattr(row, field, value)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = service_settings(tmp_path, auth_required=True, bootstrap_admin_token=BOOTSTRAP)
    db = Database(settings.database_url)
    try:
        with TestClient(create_app(settings)) as client:
            yield Service(client, db)
    finally:
        db.dispose()


def test_the_bootstrap_token_is_refused_once_an_admin_token_exists(
        service: Service, caplog: pytest.LogCaptureFixture) -> None:
    assert service.get("/v1/tokens", BOOTSTRAP)[0] == 200
    service.create("pods", "read")
    assert service.get("/v1/tokens", BOOTSTRAP)[0] == 200, "only an admin token ends the bootstrap token"

    admin = service.create("ops", "admin")
    with caplog.at_level(logging.WARNING, logger="neffcache.service.auth"):
        for _ in range(3):
            status, body = service.get("/v1/tokens", BOOTSTRAP)
            assert status == 401 and body["error"] == "unauthorized"
            assert "bootstrap admin token" in body["detail"] and "an admin token exists" in body["detail"]
    warnings = [r.getMessage() for r in caplog.records if r.name == "neffcache.service.auth"]
    assert len(warnings) == 1 and "NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN was ignored" in warnings[0]
    assert "admin tokens exist in the database" in warnings[0]

    status, body = service.get("/v1/tokens", admin)
    assert status == 200 and [t["name"] for t in body["tokens"]] == ["ops", "pods"]
    # Revoking the admin token does not bring the bootstrap token back.
    with service.db.session() as session:
        tokens.revoke_token(session, "ops", invalidation.nobody)
    assert service.get("/v1/tokens", admin)[0] == 401
    assert service.get("/v1/tokens", BOOTSTRAP)[0] == 401


def test_a_fresh_service_refuses_the_bootstrap_token_when_an_admin_token_exists(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    db = Database(url)
    with db.session() as session:
        tokens.create_token(session, "ops", "admin")
    db.dispose()
    settings = service_settings(tmp_path, database_url=url, auth_required=True, bootstrap_admin_token=BOOTSTRAP)
    with TestClient(create_app(settings)) as client:
        r = client.get("/v1/workers", headers={"Authorization": f"Bearer {BOOTSTRAP}"})
    assert r.status_code == 401 and "bootstrap" in r.json()["detail"]


def test_an_expired_token_is_401_saying_it_expired(service: Service) -> None:
    ci = service.create("ci", "write", timedelta(days=30))
    expires_at = service.row("ci").expires_at
    assert expires_at is not None and timedelta(days=30) - timedelta(minutes=1) < expires_at - utcnow() <= \
        timedelta(days=30)
    assert service.get("/v1/workers", ci)[0] == 200

    past = utcnow() - timedelta(seconds=1)
    service.set("ci", expires_at=past)
    status, body = service.get("/v1/workers", ci)
    assert status == 401 and body["error"] == "unauthorized"
    assert body["detail"] == f"Authorization: the token 'ci' expired at {past.isoformat(timespec='seconds')}"
    assert service.get("/v1/workers", "nfc_made_up")[1]["detail"] == "Authorization: the token is unknown or revoked"


def test_last_use_is_recorded_at_most_once_a_minute(service: Service) -> None:
    pods = service.create("pods", "read")
    admin = service.create("ops", "admin")
    assert service.row("pods").last_used_at is None

    before = utcnow()
    assert service.get("/v1/workers", pods)[0] == 200
    first = service.row("pods").last_used_at
    assert first is not None and before <= first <= utcnow()
    for _ in range(3):  # within the minute: not written again
        assert service.get("/v1/workers", pods)[0] == 200
    assert service.row("pods").last_used_at == first

    service.set("pods", last_used_at=first - timedelta(seconds=61))
    assert service.get("/v1/workers", pods)[0] == 200
    again = service.row("pods").last_used_at
    assert again is not None and again > first

    listed = {t["name"]: t for t in service.get("/v1/tokens", admin)[1]["tokens"]}
    assert listed["pods"]["last_used_at"] == again.isoformat() and listed["pods"]["expires_at"] is None
    # A refused token is not "used".
    service.set("pods", expires_at=utcnow() - timedelta(seconds=1), last_used_at=None)
    assert service.get("/v1/workers", pods)[0] == 401
    assert service.row("pods").last_used_at is None


@pytest.mark.parametrize(("namespaces", "namespace", "allowed"), [
    (("team-a",), "team-a", True), (("team-a",), "team-b", False), (("*",), "team-b", True),
])
def test_a_grant_checks_a_namespace_with_403_naming_it(namespaces: tuple[str, ...], namespace: str,
                                                     allowed: bool) -> None:
    grant = Grant("ci", "write", namespaces)
    if allowed:
        grant.check(namespace)
        return
    with pytest.raises(Forbidden) as refused:
        grant.check(namespace)
    assert refused.value.http_status == 403 and repr(namespace) in refused.value.detail
    assert "token 'ci' may act only in 'team-a'" in refused.value.detail


def test_a_grant_limits_listings_to_its_namespaces() -> None:
    query = select(Job)
    assert Grant("ops", "admin", ("*",)).limit(query, Job.namespace) is query
    limited = str(Grant("ci", "read", ("a", "b")).limit(query, Job.namespace).compile(
        compile_kwargs={"literal_binds": True}))
    assert "jobs.namespace IN ('a', 'b')" in limited


def test_a_revoked_token_is_refused_once_its_grant_leaves_memory(tmp_path: Path) -> None:
    """The hit path keeps a token's grant for hot_cache_s: revoked, it is taken that long at most
    (the README says so); its expiry is checked on every request all the same."""
    settings = service_settings(tmp_path, auth_required=True, hot_cache_s=0.5)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            token = tokens.create_token(session, "ci", "read")
            expiring = tokens.create_token(session, "soon", "read", timedelta(hours=1))
        with TestClient(create_app(settings)) as client:
            def status(used: str) -> int:
                return client.get("/v1/stats", headers={"Authorization": f"Bearer {used}"}).status_code

            assert status(token) == 200 and status(expiring) == 200
            with db.session() as session:
                tokens.revoke_token(session, "ci", invalidation.nobody)
                session.get(ApiToken, "soon").expires_at = utcnow() - timedelta(seconds=1)  # type: ignore[union-attr]
            assert status(token) == 200, "still in memory"
            assert status(expiring) == 200, "its expiry as it was read: in an hour"
            time.sleep(0.6)
            assert status(token) == 401 and status(expiring) == 401
    finally:
        db.dispose()
