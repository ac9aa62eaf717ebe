"""/ui's data (neffcache.service.ui) and routes (neffcache.service.routes.ui), in process on a
database of this module's own (SQLite, and Postgres when NEFFCACHE_TEST_DATABASE_URL names a
server): the hourly history counts raw and rolled-up events alike and is the same after a
roll-up; a token sees its namespaces' history and misses only; the panels need a read token (401
without one, as the API) and the shell page holds no data. The page in a browser against the
running stack: tests/stack/test_ui.py."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from neffcache import tokens
from neffcache.db import migrate
from neffcache.db.models import CacheEvent, CacheEventHour, utcnow
from neffcache.rollup import roll_up_events
from neffcache.service.app import create_app
from neffcache.service.auth import UNRESTRICTED, Grant
from neffcache.service.ui import HISTORY_HOURS, Hour, hourly
from tests.support.databases import database_kinds, empty_database
from tests.support.in_process import service_settings

KEY_A, KEY_B = "a" * 64, "b" * 64
NOW = utcnow().replace(minute=30, second=0, microsecond=0)  # half way through an hour: none is crossed below
THIS_HOUR = NOW.replace(minute=0)
TEAM_A = Grant("team-a-ci", "read", ("team-a",))


@pytest.fixture(scope="module", params=database_kinds())
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("ui")
    with empty_database(request.param, root, "ui") as url:
        migrate.upgrade(url)
        app = create_app(service_settings(root, database_url=url, auth_required=True))
        with app.state.ctx.db.session() as session:
            app.state.token = tokens.create_token(session, "team-a-ci", "read", namespaces=["team-a"])
        with TestClient(app) as client:
            yield client
            app.state.ctx.db.engine.dispose()


@pytest.fixture
def db(service: TestClient) -> Any:
    db = service.app.state.ctx.db  # type: ignore[attr-defined]
    with db.session() as session:
        session.execute(delete(CacheEvent))
        session.execute(delete(CacheEventHour))
    return db


def ev(hours_ago: int, outcome: str = "hit", kind: str = "lookup", key: str = KEY_A, namespace: str = "team-a",
       saved_seconds: float = 10.0) -> CacheEvent:
    return CacheEvent(at=NOW - timedelta(hours=hours_ago), kind=kind, outcome=outcome, key=key, namespace=namespace,
                      target="trn1", compiler_name="neuronx-cc", compiler_version="2.21.18209.0", caller="ci",
                      saved_seconds=saved_seconds if outcome == "hit" else 0.0)


def history() -> list[CacheEvent]:
    """Hits and misses in team-a and team-b, this hour and 5 and 30 hours ago; downloads (not
    lookups); and a lookup older than the plots' window."""
    return [
        ev(0), ev(0), ev(0, "miss"), ev(0, kind="download"),
        ev(5, kind="compile"), ev(5, "miss", kind="compile"), ev(5, "miss"), ev(5, "miss"),
        ev(30), ev(30, key=KEY_B, namespace="team-b"), ev(30, "miss", key=KEY_B, namespace="team-b"),
        ev(HISTORY_HOURS + 2),
    ]


def _counts(hours: list[Hour]) -> dict[int, tuple[int, int, float]]:
    """{hours ago: (lookups, lookup hits, seconds saved)} of the hours that had lookups."""
    return {int((THIS_HOUR - h.start) / timedelta(hours=1)): (h.lookups, h.lookup_hits, h.saved_seconds)
            for h in hours if h.lookups}


# (who, {hours ago: (lookups, lookup hits, seconds saved)})
HISTORIES = [
    pytest.param(UNRESTRICTED, {0: (3, 2, 20.0), 5: (4, 1, 10.0), 30: (3, 2, 20.0)}, id="every-namespace"),
    pytest.param(TEAM_A, {0: (3, 2, 20.0), 5: (4, 1, 10.0), 30: (1, 1, 10.0)}, id="team-a"),
]


@pytest.mark.parametrize("seen, expected", HISTORIES)
def test_hourly_history_counts_raw_and_rolled_up_events_alike(db: Any, seen: Grant,
                                                              expected: dict[int, tuple[int, int, float]]) -> None:
    with db.session() as session:
        session.add_all(history())
    with db.session() as session:
        before = hourly(session, seen, NOW, HISTORY_HOURS)
    assert roll_up_events(db, NOW - timedelta(hours=2)) == 8  # those of 5 and 30 hours ago, and the oldest
    with db.session() as session:
        after = hourly(session, seen, NOW, HISTORY_HOURS)
    assert after == before
    assert len(before) == HISTORY_HOURS and before[-1].start == THIS_HOUR
    assert before[0].start == THIS_HOUR - timedelta(hours=HISTORY_HOURS - 1)
    assert _counts(before) == expected
    assert before[-1].hit_rate == pytest.approx(2 / 3) and before[-2].hit_rate is None


def _as(service: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {service.app.state.token}"}  # type: ignore[attr-defined]


def test_panels_need_a_read_token_and_show_its_namespaces_only(service: TestClient, db: Any) -> None:
    with db.session() as session:
        session.add_all([ev(0, "miss"), ev(1, "miss", key=KEY_B, namespace="team-b")])
    refused = service.get("/ui/panels")
    assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    assert service.get("/ui/panels", headers={"Authorization": "Bearer nfc_unknown"}).status_code == 401
    shown = service.get("/ui/panels", headers=_as(service))
    assert shown.status_code == 200 and shown.headers["content-type"].startswith("text/html")
    assert KEY_A[:12] in shown.text and KEY_B[:12] not in shown.text and "team-b" not in shown.text
    assert 'id="panel-misses"' in shown.text and "a lookup only" in shown.text
    assert shown.headers["cache-control"] == "no-store"
    bad = service.get("/ui/panels", params={"hours": 0}, headers=_as(service))
    assert bad.status_code == 400 and "hours" in bad.json()["detail"], bad.text


def test_the_shell_page_holds_no_data_and_allows_only_its_own_script(service: TestClient) -> None:
    page = service.get("/ui")
    assert page.status_code == 200 and "panel-" not in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    # The token field has no name: no form submission can put it in a URL.
    assert '<input id="token" type="password"' in page.text and "name=" not in page.text.split('id="token"')[1][:80]
    script = service.get("/ui/static/ui.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "sessionStorage" in script.text
    assert service.get("/ui/static/app.py").status_code == 404
