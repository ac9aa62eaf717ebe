"""Keys and job ids named by a unique prefix (as git names commits), and the two usage counts of
an artifact (`lookup_hits`, `downloads`) named apart in the artifact view and in /v1/stats.

In process (an app on a fresh SQLite database, rows written as the service writes them), then
over HTTP against the running stack."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from neffcache.db.models import Artifact, Job, utcnow
from neffcache.errors import EXIT_USAGE, AmbiguousPrefix, from_body
from neffcache.service.app import create_app
from neffcache.service.resolve import CANDIDATES_SHOWN, resolve_job_id, resolve_key
from tests.support.api import (
    SAMPLE_MANIFEST,
    digest_of,
    error_body,
    hlo_model,
    key_with_prefix,
)
from tests.support.in_process import service_settings
from tests.support.stack import REPO


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The service in process, on its own SQLite database and folder store; no Redis is needed."""
    tmp = tmp_path_factory.mktemp("prefixes")
    settings = service_settings(tmp, auth_required=False)
    with TestClient(create_app(settings)) as client:
        yield client


def _add_artifacts(app: TestClient, *keys: str) -> None:
    with app.app.state.ctx.db.session() as session:
        for key in keys:
            session.add(Artifact.from_manifest(key, SAMPLE_MANIFEST, [], compile_seconds=1.0, job_id=None,
                                               annotations=None))


def _add_jobs(app: TestClient, *ids: str, **fields: Any) -> None:
    with app.app.state.ctx.db.session() as session:
        for job_id in ids:
            session.add(Job(id=job_id, key=uuid.uuid4().hex * 2, manifest=SAMPLE_MANIFEST, queue="q", state="succeeded",
                            attempts=1, max_attempts=1, cancel_requested=False, created_at=utcnow(),
                            **fields))


# --- keys --------------------------------------------------------------------------------------
def test_a_unique_key_prefix_names_the_artifact_everywhere_a_key_is_named(app: TestClient) -> None:
    key = key_with_prefix("901c66ed", "a")
    _add_artifacts(app, key)
    for prefix in ("901c66ed", "901c66edaaaa", key[:63], key, "901C66EDAAAA"):
        r = app.get(f"/v1/artifacts/{prefix}")
        assert r.status_code == 200, (prefix, r.text)
        assert r.json()["key"] == key
    # The file route resolves the same way (this artifact has no files: the 404 names the whole key).
    missing = error_body(app.get("/v1/artifacts/901c66ed/files/model.neff"), 404, "not_found")
    assert key in missing["detail"] and "model.neff" in missing["detail"]
    assert app.get("/v1/hits", params={"key": "901c66ed"}).json() == {"hits": []}


def test_an_ambiguous_key_prefix_is_409_listing_the_candidates(app: TestClient) -> None:
    first, second = key_with_prefix("5eed0001", "a"), key_with_prefix("5eed0001", "b")
    _add_artifacts(app, first, second)
    for path in ("/v1/artifacts/5eed0001", "/v1/artifacts/5eed0001/files/model.neff"):
        body = error_body(app.get(path), 409, "ambiguous_prefix")
        assert body["candidates"] == [first, second] and body["matches"] == 2 and body["field"] == "key"
        assert first in body["detail"] and second in body["detail"] and "key" in body["detail"]
    body = error_body(app.get("/v1/hits", params={"key": "5eed0001"}), 409, "ambiguous_prefix")
    # One more character settles it.
    assert app.get("/v1/artifacts/5eed0001b").json()["key"] == second
    # The client rebuilds the error, and exits as for bad usage.
    err = from_body(body, 409)
    assert isinstance(err, AmbiguousPrefix) and err.exit_code == EXIT_USAGE


def test_many_candidates_show_a_few_and_count_the_rest(app: TestClient) -> None:
    keys = [key_with_prefix("c0ffee00", str(i)) for i in range(CANDIDATES_SHOWN + 3)]
    _add_artifacts(app, *keys)
    body = error_body(app.get("/v1/artifacts/c0ffee00"), 409, "ambiguous_prefix")
    assert body["matches"] == len(keys) and body["candidates"] == sorted(keys)[:CANDIDATES_SHOWN]
    assert "and 3 more" in body["detail"]


@pytest.mark.parametrize("bad", ["901c66e", "901c66eg", "zzzzzzzzzz", "901c66ed-1", "a" * 65,
                                 "%25%25%25%25%25%25%25%25", "%00", "901c66ed%00", "901c66ed%0A", "%0A901c66ed"])
def test_short_or_non_hex_keys_are_400_naming_the_field(app: TestClient, bad: str) -> None:
    for path in (f"/v1/artifacts/{bad}", f"/v1/artifacts/{bad}/files/model.neff"):
        body = error_body(app.get(path), 400, "invalid_parameter")
        assert body["detail"].startswith("key:") and body["field"] == "key"
    assert error_body(app.get(f"/v1/hits?key={bad}"), 400, "invalid_parameter")["field"] == "key"


def test_no_artifact_with_the_prefix_is_404(app: TestClient) -> None:
    body = error_body(app.get("/v1/artifacts/deadbeef"), 404, "not_found")
    assert "deadbeef" in body["detail"] and body["key"] == "deadbeef"
    error_body(app.get("/v1/artifacts/" + "d" * 64), 404, "not_found")
    assert app.get("/v1/hits", params={"key": "d" * 64}).json() == {"hits": []}  # a whole key filters as it is


# --- job ids -----------------------------------------------------------------------------------
def test_job_id_prefixes_for_get_log_and_cancel(app: TestClient) -> None:
    done, also = "394a1b2c-0000-4000-8000-000000000001", "394a1b2c-0000-4000-8000-000000000002"
    _add_jobs(app, done, also, log_tail="compiling...\n", log_bytes=13)
    queued = "77aa00bb-1111-4000-8000-000000000003"
    with app.app.state.ctx.db.session() as session:
        session.add(Job(id=queued, key=key_with_prefix("77aa00bb", "e"), manifest=SAMPLE_MANIFEST, queue="q",
                        state="queued", attempts=0, max_attempts=1, cancel_requested=False, created_at=utcnow()))

    assert app.get("/v1/jobs/394a1b2c-0000-4000-8000-000000000001").json()["id"] == done
    assert app.get("/v1/jobs/394a1b2c-0000-4000-8000-0000000000").status_code == 409
    assert app.get("/v1/jobs/394a1b2c-0000-4000-8000-0000000000").json()["candidates"] == [done, also]
    assert app.get("/v1/jobs/394A1B2C-0000-4000-8000-000000000002").json()["id"] == also
    for path in ("/v1/jobs/394a1b2c", "/v1/jobs/394a1b2c/log"):
        body = error_body(app.get(path), 409, "ambiguous_prefix")
        assert body["candidates"] == [done, also] and body["field"] == "job_id"
    error_body(app.post("/v1/jobs/394a1b2c/cancel"), 409, "ambiguous_prefix")
    log = app.get("/v1/jobs/394a1b2c-0000-4000-8000-000000000001/log")
    assert log.status_code == 200 and log.text == "compiling...\n"

    assert app.get("/v1/jobs/77aa00bb").json()["id"] == queued
    cancelled = app.post("/v1/jobs/77aa00bb-11/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["id"] == queued and cancelled.json()["state"] == "cancelled"
    ended = error_body(app.post("/v1/jobs/77aa00bb/cancel"), 409, "job_finished")
    assert queued in ended["detail"]


@pytest.mark.parametrize("bad", ["nope", "394a1b2", "394a1b2c0", "394a1b2c-00000", "394a1b2g",
                                 "394a1b2c-0000-4000-8000-0000000000011", "%00", "394a1b2c%00", "394a1b2c%0A",
                                 "394a1b2c-0000-4000-8000-000000000001%0A"])
def test_short_or_malformed_job_ids_are_400_naming_the_field(app: TestClient, bad: str) -> None:
    for method, path in (("GET", f"/v1/jobs/{bad}"), ("GET", f"/v1/jobs/{bad}/log"),
                         ("POST", f"/v1/jobs/{bad}/cancel")):
        body = error_body(app.request(method, path), 400, "invalid_parameter")
        assert body["detail"].startswith("job_id:") and body["field"] == "job_id"


def test_no_job_with_the_prefix_is_404(app: TestClient) -> None:
    for method, path in (("GET", "/v1/jobs/ffffffff"), ("GET", "/v1/jobs/ffffffff/log"),
                         ("POST", "/v1/jobs/ffffffff/cancel"),
                         ("GET", "/v1/jobs/ffffffff-ffff-4fff-8fff-ffffffffffff")):
        body = error_body(app.request(method, path), 404, "not_found")
        assert "ffffffff" in body["detail"] and body["job"].startswith("ffffffff")


# --- the query uses the primary key's index ----------------------------------------------------
def test_prefix_queries_search_the_primary_key_index(app: TestClient) -> None:
    ctx = app.app.state.ctx
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    _add_artifacts(app, key_with_prefix("ab12cd34", "1"), key_with_prefix("ab12cd34", "2"))
    _add_jobs(app, "ab12cd34-0000-4000-8000-000000000001")
    event.listen(ctx.db.engine, "before_cursor_execute", capture)
    try:
        with ctx.db.session() as session:
            with pytest.raises(AmbiguousPrefix):
                resolve_key(session, "ab12cd34")
            assert resolve_job_id(session, "ab12cd34") == "ab12cd34-0000-4000-8000-000000000001"
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", capture)
    assert len(statements) == 3  # candidates, their count, the job
    with ctx.db.engine.connect() as conn:
        for statement, parameters in statements:
            plan = " ".join(str(row[-1]) for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
            assert re.search(r"SEARCH (artifacts|jobs) USING (COVERING )?INDEX \w+ \((key|id)>\? AND (key|id)<\?\)",
                             plan), plan


# --- lookup hits and downloads, named apart ----------------------------------------------------
def test_one_lookup_hit_and_one_download_are_one_of_each_in_the_artifact_and_the_stats(app: TestClient) -> None:
    model, package = b"pt2 model " + hlo_model(), b"compiled package " + hlo_model()
    for data in (model, package):
        assert app.put(f"/v1/blobs/{digest_of(data)}", content=data).status_code == 201
    spec = {"model": {"format": "torch-export", "digest": digest_of(model)},
            "inputs": [{"name": "x", "shape": [2, 4], "dtype": "float32"}], "target": "cpu",
            "compiler": {"name": "inductor", "version": "2.13.0+cpu"}}
    before = app.get("/v1/stats").json()
    files = [{"name": "model.pt2", "digest": digest_of(package)}]
    made = app.post("/v1/artifacts", json={"spec": spec, "files": files})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    assert {k: made.json()["artifact"][k] for k in ("lookup_hits", "downloads")} == {"lookup_hits": 0, "downloads": 0}

    hit = app.post("/v1/lookup", json={"spec": spec})
    assert hit.status_code == 200 and hit.json()["artifact"]["lookup_hits"] == 1
    download = app.get(f"/v1/artifacts/{key[:10]}/files/model.pt2")
    assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == digest_of(package)[7:]

    artifact = app.get(f"/v1/artifacts/{key}").json()
    assert (artifact["lookup_hits"], artifact["downloads"]) == (1, 1)
    assert artifact["hits"] == 1  # the deprecated alias means what it means in /v1/stats
    after = app.get("/v1/stats").json()
    assert after["lookup_hits"] - before["lookup_hits"] == 1 and after["downloads"] - before["downloads"] == 1
    assert after["hits"] == after["lookup_hits"] and after["by_target"]["cpu"]["lookup_hits"] >= 1
    assert {h["kind"] for h in app.get("/v1/hits", params={"key": key[:8]}).json()["hits"]} == {"lookup", "download"}


def test_the_readme_shows_the_new_names() -> None:
    readme = (REPO / "README.md").read_text()
    assert '"lookup_hits"' in readme and '"downloads"' in readme
    assert "ambiguous_prefix" in readme and "by-name" in readme
