"""README guarantees about the service that no other test showed on its own, in process (the real
app and `neffcache-admin`, SQLite made by the migrations, the folder object store):

- a token is printed once, when it is made (and the command says it is not shown again); the
  database keeps only its sha256, and neither `token list` nor `GET /v1/tokens` ever shows it;
- a corrupt object the service reads is logged (besides its 502 and its count, which
  test_streaming.py shows);
- a blob that `scrub --quarantine` moved aside reads as missing over HTTP (HEAD 404), so the
  client uploads it again, and that upload makes it again.

And the bootstrap admin token stays refused after the revoked admin token's name is used again
(the revoked row is kept under a name of its own, not deleted).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from neffcache import invalidation, tokens
from neffcache.db.session import Database
from neffcache.service.app import create_app
from neffcache.storage.scrub import scrub
from tests.support.api import digest_of, error_body
from tests.support.in_process import migrated_sqlite, run_admin, service_settings
from tests.support.tamper import overwrite_stored_bytes


def test_a_token_is_stored_only_as_its_sha256_and_shown_only_when_made(
        database: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_admin(capsys, monkeypatch, "token", "create", "--name", "ops", "--scope", "admin")
    assert code == 0 and out.count("\n") == 1
    admin = out.strip()
    assert admin.startswith("nfc_") and admin not in err and "not shown again" in err
    db = Database(database)
    with db.session() as session:  # as the command makes any token (which scopes need more options varies)
        token = tokens.create_token(session, "ci", "read")
    db.dispose()

    db = Database(database)
    try:
        with db.session() as session:
            rows = [dict(row) for row in session.execute(text("SELECT * FROM api_tokens")).mappings()]
    finally:
        db.dispose()
    [ci] = [row for row in rows if row["name"] == "ci"]
    assert ci["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    for row in rows:
        assert not any(secret in str(value) for value in row.values() for secret in (token, admin)), row
    # Nor anywhere else in the database's files.
    path = Path(database.removeprefix("sqlite:///"))
    for stored in path.parent.glob(path.name + "*"):
        data = stored.read_bytes()
        assert token.encode() not in data and admin.encode() not in data, stored

    for args in (("token", "list"), ("token", "list", "--json")):
        code, out, err = run_admin(capsys, monkeypatch, *args)
        assert code == 0 and "ops" in out and token not in out + err and admin not in out + err

    # The service takes it (it knows its hash), and never answers with it.
    settings = service_settings(tmp_path / "service", database_url=database, auth_required=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/workers", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        listed = client.get("/v1/tokens", headers={"Authorization": f"Bearer {admin}"})
    assert listed.status_code == 200 and {t["name"] for t in listed.json()["tokens"]} == {"ci", "ops"}
    assert token not in listed.text and admin not in listed.text
    assert not any("token" in field and "sha256" in field for t in listed.json()["tokens"] for field in t)
    assert json.loads(listed.text) == listed.json()


def test_a_corrupt_object_the_service_reads_is_counted_and_logged(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    data = b"HloModule corrupt_and_logged\n"
    digest = digest_of(data)
    hex_digest = digest.split(":", 1)[1]
    with TestClient(create_app(service_settings(tmp_path, auth_required=False))) as client:
        assert client.put(f"/v1/blobs/{digest}", content=data).status_code == 201
        overwrite_stored_bytes(client.app.state.ctx.store, hex_digest, data[:-1] + b"!")  # type: ignore[attr-defined]
        with caplog.at_level(logging.ERROR):
            error_body(client.get(f"/v1/blobs/{digest}"), 502, "corrupt_object", hex_digest)
        metrics = client.get("/metrics").text
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(f"sha256:{hex_digest} is corrupt" in line for line in logged), logged
    assert 'neffcache_corrupt_objects_total{found_by="blob"} 1.0' in metrics.splitlines()


def test_a_quarantined_blob_reads_as_missing_over_http_and_the_next_upload_makes_it_again(tmp_path: Path) -> None:
    data = b"HloModule quarantined\n" * 10
    digest = digest_of(data)
    hex_digest = digest.split(":", 1)[1]
    with TestClient(create_app(service_settings(tmp_path, auth_required=False))) as client:
        assert client.put(f"/v1/blobs/{digest}", content=data).status_code == 201
        store = client.app.state.ctx.store  # type: ignore[attr-defined]
        overwrite_stored_bytes(store, hex_digest, data[:-1] + b"?")
        assert client.head(f"/v1/blobs/{digest}").status_code == 200  # corrupt, but there

        report = scrub(store, quarantine=True)  # what `neffcache-admin scrub --quarantine` runs
        assert [found.digest for found in report.corrupt] == [digest]
        # What the client asks before it uploads (`neffcache compile`, push): missing, so it uploads.
        assert client.head(f"/v1/blobs/{digest}").status_code == 404
        error_body(client.get(f"/v1/blobs/{digest}"), 404, "not_found")
        again = client.put(f"/v1/blobs/{digest}", content=data)
        assert again.status_code == 201 and again.json()["created"] is True, again.text
        head = client.head(f"/v1/blobs/{digest}")
        assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        assert client.get(f"/v1/blobs/{digest}").content == data


def test_the_bootstrap_token_stays_refused_after_the_revoked_admin_tokens_name_is_reused(tmp_path: Path) -> None:
    url = migrated_sqlite(tmp_path)
    db = Database(url)
    try:
        with db.session() as session:
            tokens.create_token(session, "ops", "admin")
        with db.session() as session:
            tokens.revoke_token(session, "ops", invalidation.nobody)
        with db.session() as session:
            tokens.create_token(session, "ops", "read")  # the name again, for a token of another scope
    finally:
        db.dispose()
    bootstrap = "nfc_test-claims-bootstrap"
    settings = service_settings(tmp_path, database_url=url, auth_required=True, bootstrap_admin_token=bootstrap)
    with TestClient(create_app(settings)) as client:  # a service (re)started after all that
        r = client.get("/v1/tokens", headers={"Authorization": f"Bearer {bootstrap}"})
    assert r.status_code == 401, r.text
