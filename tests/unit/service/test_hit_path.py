"""The hit path in process (the real app, SQLite made by the migrations, auth on): a warm lookup
hit, compile hit and artifact GET ask the database nothing, and the counts they show stay exact
for this process's own events across flushes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from neffcache import tokens
from neffcache.db.models import Artifact, ArtifactFile
from neffcache.key import key_for_spec
from neffcache.service.app import create_app
from neffcache.service.context import ServiceContext
from neffcache.spec import CompileSpec
from tests.support.in_process import service_settings
from tests.unit.service.conftest import SPEC, HitPath


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/lookup", {"spec": SPEC}),
    ("POST", "/v1/compile", {"spec": SPEC}),
    ("GET", "/v1/artifacts/{key}", None),
])
def test_a_warm_hit_asks_the_database_nothing(hit_path: HitPath, method: str, path: str, body: Any) -> None:
    url = path.format(key=hit_path.key)
    status, first, cold = hit_path.counted(method, url, json=body)
    assert status == 200 and cold > 0
    status, again, warm = hit_path.counted(method, url, json=body)
    assert status == 200 and warm == 0, hit_path.statements[-warm:] if warm else None
    artifact = again.get("artifact", again)
    assert artifact["key"] == hit_path.key and artifact["origin"] == {"kind": "pushed", "token": "release-bot"}


def test_counts_stay_exact_for_this_process_across_flushes(hit_path: HitPath) -> None:
    shown = []
    for n in range(6):
        if n in (2, 4):
            hit_path.ctx.events.flush()
        status, body, _ = hit_path.counted("POST", "/v1/lookup", json={"spec": SPEC})
        assert status == 200
        shown.append(body["artifact"]["lookup_hits"])
    # Each answer counts the lookup it answers: 1, 2, ... whether its events were written or not.
    assert shown == [1, 2, 3, 4, 5, 6]
    status, artifact, _ = hit_path.counted("GET", f"/v1/artifacts/{hit_path.key}")
    assert artifact["lookup_hits"] == 6 and artifact["downloads"] == 0


def test_an_artifact_first_read_by_a_refused_request_is_served_whole_later(tmp_path: Path) -> None:
    """The request that reads an artifact into memory may be refused after reading it (a token
    of another namespace): its session rolls back, and what is in memory must stay whole."""
    settings = service_settings(tmp_path, auth_required=True, hot_cache_s=60.0)
    app = create_app(settings)
    ctx: ServiceContext = app.state.ctx
    manifest, key = key_for_spec(CompileSpec.model_validate(SPEC).model_dump(mode="json"))
    with ctx.db.session() as session:
        team_a = tokens.create_token(session, "a", "read", namespaces=["team-a"])
        team_b = tokens.create_token(session, "b", "read", namespaces=["team-b"])
        session.add(Artifact.from_manifest(
            key, manifest, [ArtifactFile(name="model.neff", digest="sha256:" + "2" * 64, size=2048, neff=None)],
            compile_seconds=30.0, job_id=None, annotations=None))
    with TestClient(app) as client:
        refused = client.get(f"/v1/artifacts/{key}", headers={"Authorization": f"Bearer {team_b}"})
        assert refused.status_code == 403
        shown = client.get(f"/v1/artifacts/{key}", headers={"Authorization": f"Bearer {team_a}"})
        assert shown.status_code == 200 and shown.json()["files"][0]["name"] == "model.neff"


def test_a_namespace_outside_the_token_is_refused_from_memory_too(hit_path: HitPath) -> None:
    assert hit_path.counted("POST", "/v1/lookup", json={"spec": SPEC})[0] == 200
    other = {**SPEC, "namespace": "team-b"}
    status, body, _ = hit_path.counted("POST", "/v1/lookup", json={"spec": other})
    assert status == 403 and "'team-b'" in body["detail"]
    with hit_path.ctx.db.session() as session:
        session.get(Artifact, hit_path.key).namespace = "team-b"  # type: ignore[union-attr]
    hit_path.ctx.artifacts.clear()
    status, body, _ = hit_path.counted("GET", f"/v1/artifacts/{hit_path.key}")
    assert status == 403 and "'team-b'" in body["detail"]
