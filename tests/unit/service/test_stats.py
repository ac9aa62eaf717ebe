"""/v1/stats and /v1/hits (neffcache.service.routes.stats) read raw cache events and their hourly
roll-ups (neffcache.rollup) alike, in process on a database of this module's own (SQLite, and
Postgres when NEFFCACHE_TEST_DATABASE_URL names a server): stats are exactly the same before and
after a roll-up, for an every-namespace token and a namespace-limited one; hits list the raw ones
newest first, then the rolled-up ones (`at`: their hour, `count`), with the same filters."""

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
from neffcache.service.views import iso
from tests.support.databases import database_kinds, empty_database
from tests.support.in_process import service_settings

KEY_A, KEY_B = "a" * 64, "b" * 64
NOW = utcnow().replace(minute=30, second=0, microsecond=0)  # half way through an hour: none is crossed below
RETENTION = timedelta(days=1)


class Service:
    def __init__(self, client: TestClient, headers: dict[str, dict[str, str]]) -> None:
        self.client = client
        self.headers = headers  # by token: "all" (every namespace), "team-a"

    def get(self, path: str, token: str, **params: Any) -> dict[str, Any]:
        r = self.client.get(path, params=params, headers=self.headers[token])
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    @property
    def db(self) -> Any:
        return self.client.app.state.ctx.db  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=database_kinds())
def service(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("stats")
    with empty_database(request.param, root, "stats") as url:
        migrate.upgrade(url)
        app = create_app(service_settings(root, database_url=url, auth_required=True))
        with app.state.ctx.db.session() as session:
            made = {"all": tokens.create_token(session, "ops", "read", namespaces=None),
                    "team-a": tokens.create_token(session, "team-a-ci", "read", namespaces=["team-a"])}
        with TestClient(app) as client:
            yield Service(client, {name: {"Authorization": f"Bearer {t}"} for name, t in made.items()})
            app.state.ctx.db.engine.dispose()


@pytest.fixture
def db(service: Service) -> Any:
    with service.db.session() as session:
        session.execute(delete(CacheEvent))
        session.execute(delete(CacheEventHour))
    return service.db


def ev(ago: timedelta, kind: str = "lookup", outcome: str = "hit", key: str = KEY_A, namespace: str | None = "team-a",
       caller: str | None = "ci", target: str = "trn1", compiler: tuple[str, str] = ("neuronx-cc", "2.21.18209.0"),
       saved_seconds: float | None = None) -> CacheEvent:
    saved = saved_seconds if saved_seconds is not None else (12.5 if outcome == "hit" and kind != "download" else 0.0)
    return CacheEvent(at=NOW - ago, kind=kind, outcome=outcome, key=key, namespace=namespace, target=target,
                      compiler_name=compiler[0], compiler_version=compiler[1], caller=caller, saved_seconds=saved)


def history() -> list[CacheEvent]:
    """Events of every kind, outcome, namespace (NULL too), target and compiler, old and recent."""
    events = []
    for day in range(4):  # days 0 (recent: kept raw) to 3
        for i, (kind, outcome) in enumerate([("lookup", "hit"), ("lookup", "miss"), ("compile", "hit"),
                                             ("compile", "miss"), ("download", "hit")]):
            ago = timedelta(days=day, minutes=i + 1)
            events += [ev(ago, kind, outcome),
                       ev(ago, kind, outcome, key=KEY_B, namespace="team-b", caller=None, target="inf2",
                          compiler=("inductor", "2.5.1")),
                       ev(ago, kind, outcome, namespace=None, saved_seconds=0.25)]
    return events


def insert(db: Any, events: list[CacheEvent]) -> None:
    with db.session() as session:
        session.add_all(events)


def test_stats_are_the_same_before_and_after_a_roll_up(service: Service, db: Any) -> None:
    insert(db, history())
    before = {token: service.get("/v1/stats", token) for token in ("all", "team-a")}
    assert roll_up_events(db, NOW - RETENTION) == 45  # days 1 to 3: 3 x 5 x 3 events
    after = {token: service.get("/v1/stats", token) for token in ("all", "team-a")}
    assert after == before
    # What they count: every namespace sees every event (a NULL namespace too), team-a its own.
    assert (before["all"]["lookups"], before["all"]["lookup_hits"], before["all"]["downloads"]) == (48, 24, 12)
    assert (before["team-a"]["lookups"], before["team-a"]["lookup_hits"], before["team-a"]["downloads"]) == (16, 8, 4)
    assert set(before["team-a"]["by_target"]) == {"trn1"} and set(before["all"]["by_target"]) == {"trn1", "inf2"}
    assert before["team-a"]["compile_seconds_saved"] == 8 * 12.5


def test_hits_list_raw_hits_newest_first_then_rolled_up_hours(service: Service, db: Any) -> None:
    insert(db, [ev(timedelta(minutes=5)), ev(timedelta(minutes=1), kind="download"),
                ev(timedelta(days=2)), ev(timedelta(days=2, minutes=10)), ev(timedelta(days=3), kind="compile"),
                ev(timedelta(days=2), outcome="miss")])
    roll_up_events(db, NOW - RETENTION)
    hits = service.get("/v1/hits", "team-a")["hits"]
    hour = (NOW - timedelta(days=2)).replace(minute=0)
    assert [(h["kind"], h["count"], h["at"]) for h in hits] == [
        ("download", 1, iso(NOW - timedelta(minutes=1))),
        ("lookup", 1, iso(NOW - timedelta(minutes=5))),
        ("lookup", 2, iso(hour)),
        ("compile", 1, iso(hour - timedelta(days=1))),
    ]
    assert {(h["key"], h["caller"], h["outcome"], h["target"]) for h in hits} == {(KEY_A, "ci", "hit", "trn1")}


HITS_FILTERS = [
    # (token, query, the (kind, count) listed)
    pytest.param("all", {}, [("lookup", 1), ("lookup", 1), ("lookup", 2), ("lookup", 1), ("lookup", 1)], id="all"),
    pytest.param("team-a", {}, [("lookup", 1), ("lookup", 2)], id="namespace-limited"),
    pytest.param("all", {"key": KEY_B}, [("lookup", 1), ("lookup", 1)], id="key"),
    pytest.param("all", {"caller": "ci"}, [("lookup", 1), ("lookup", 2), ("lookup", 1)], id="caller"),
    pytest.param("all", {"limit": 1}, [("lookup", 1)], id="limit-within-raw"),
    pytest.param("all", {"limit": 3}, [("lookup", 1), ("lookup", 1), ("lookup", 2)], id="limit-into-rolled-up"),
]


@pytest.mark.parametrize("token, query, listed", HITS_FILTERS)
def test_hits_filters_apply_to_raw_and_rolled_up_hits_alike(service: Service, db: Any, token: str,
                                                            query: dict[str, Any], listed: list[tuple[str, int]]
                                                            ) -> None:
    insert(db, [
        ev(timedelta(minutes=1)),  # raw, team-a, ci
        ev(timedelta(minutes=2), key=KEY_B, namespace="team-b", caller="release-bot"),  # raw
        ev(timedelta(days=2)), ev(timedelta(days=2, minutes=1)),  # one rolled-up hour of team-a, ci
        ev(timedelta(days=3), key=KEY_B, namespace="team-b", caller=None),  # rolled up, caller ''
        ev(timedelta(days=3), namespace=None),  # rolled up, namespace ''
    ])
    roll_up_events(db, NOW - RETENTION)
    hits = service.get("/v1/hits", token, **query)["hits"]
    assert [(h["kind"], h["count"]) for h in hits] == listed, hits
    if token == "all" and not query:
        assert [h["caller"] for h in hits] == ["ci", "release-bot", "ci", None, "ci"]  # '' is shown as no caller
