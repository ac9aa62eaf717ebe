"""GET /v1/storage and the storage metrics, in process against SQLite made by the migrations:
stored and pinned bytes per namespace against the quotas, the last GC pass, and a blocked
eviction, each shown only within the token's namespaces."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from neffcache import gc, tokens
from neffcache.db.models import utcnow
from neffcache.service.app import create_app
from neffcache.service.context import ServiceContext
from tests.support.cache_contents import DAY, Cache
from tests.support.in_process import service_settings


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[TestClient, Cache, dict[str, str]]]:
    settings = service_settings(tmp_path, auth_required=True, gc_quota_bytes="300",
                                gc_namespace_quota_bytes={"team-a": 150, "team-c": 10})
    app = create_app(settings)
    ctx: ServiceContext = app.state.ctx
    with ctx.db.session() as session:
        made = {name: tokens.create_token(session, name, "read", namespaces=namespaces)
                for name, namespaces in (("ops", None), ("team-a", ["team-a"]))}
    with TestClient(app) as client:
        yield client, Cache(ctx.db, ctx.store), made


def test_stored_and_pinned_bytes_against_the_quotas_and_the_last_pass(
        service: tuple[TestClient, Cache, dict[str, str]]) -> None:
    client, cache, made = service
    now = utcnow()
    a1, a2 = cache.artifact(size=100, namespace="team-a", used=now), cache.artifact(size=100, namespace="team-a")
    cache.artifact(size=36, namespace="team-b")
    cache.pin("prod", a1)
    gc.run_gc(cache.db, cache.store, client.app.state.ctx.settings, holder="test", now=now)  # type: ignore[attr-defined]

    everything = client.get("/v1/storage", headers={"Authorization": f"Bearer {made['ops']}"}).json()
    assert (everything["artifacts"], everything["stored_bytes"], everything["pinned_bytes"]) == (2, 264, 164)
    assert everything["quota_bytes"] == 300
    assert everything["by_namespace"] == {
        "team-a": {"artifacts": 1, "stored_bytes": 164, "pinned_bytes": 164, "quota_bytes": 150},
        "team-b": {"artifacts": 1, "stored_bytes": 100, "pinned_bytes": 0, "quota_bytes": None},
        "team-c": {"artifacts": 0, "stored_bytes": 0, "pinned_bytes": 0, "quota_bytes": 10},
    }
    assert everything["last_gc"]["evicted_artifacts"] == 1 and everything["last_gc"]["evicted_bytes"] == 164
    assert everything["blocked"] == ["namespace 'team-a' keeps 164 bytes, over its quota of 150: 164 bytes of it "
                                     "are pinned, and pinned artifacts are never evicted"]
    assert a2 not in cache.keys()

    mine = client.get("/v1/storage", headers={"Authorization": f"Bearer {made['team-a']}"}).json()
    assert set(mine["by_namespace"]) == {"team-a"} and mine["stored_bytes"] == 164
    assert client.get("/v1/storage").status_code == 401


def test_a_blocked_quota_of_another_namespace_is_not_shown(service: tuple[TestClient, Cache, dict[str, str]]) -> None:
    client, cache, made = service
    pinned = cache.artifact(size=100, namespace="team-c")
    cache.pin("prod", pinned)
    gc.run_gc(cache.db, cache.store, client.app.state.ctx.settings, holder="test")  # type: ignore[attr-defined]
    assert client.get("/v1/storage", headers={"Authorization": f"Bearer {made['team-a']}"}).json()["blocked"] == []
    seen = client.get("/v1/storage", headers={"Authorization": f"Bearer {made['ops']}"}).json()["blocked"]
    assert len(seen) == 1 and seen[0].startswith("namespace 'team-c'")


def test_metrics_say_what_is_stored_pinned_evicted_and_whether_eviction_is_blocked(
        service: tuple[TestClient, Cache, dict[str, str]]) -> None:
    client, cache, made = service
    now = utcnow()
    keep = cache.artifact(size=100, namespace="team-b", used=now)
    cache.artifact(size=300, namespace="team-b", used=now - DAY)
    cache.pin("prod", keep)
    gc.run_gc(cache.db, cache.store, client.app.state.ctx.settings, holder="test", now=now)  # type: ignore[attr-defined]
    registry = client.app.state.ctx.metrics.registry  # type: ignore[attr-defined]

    def sample(name: str) -> float | None:
        value: float | None = registry.get_sample_value(name)
        return value

    assert sample("neffcache_stored_bytes") == 164 and sample("neffcache_pinned_bytes") == 164
    assert sample("neffcache_quota_bytes") == 300
    assert sample("neffcache_gc_runs_total") == 1 and sample("neffcache_gc_evictions_total") == 1
    assert sample("neffcache_gc_evicted_bytes_total") == 364
    assert sample("neffcache_gc_blocked") == 0
    assert (sample("neffcache_gc_last_run_timestamp_seconds") or 0) > now.timestamp() - 60
    text = client.get("/metrics", headers={"Authorization": f"Bearer {made['ops']}"}).text
    assert "neffcache_gc_objects_deleted_total 0.0" in text
