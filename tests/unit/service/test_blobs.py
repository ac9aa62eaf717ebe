"""PUT /v1/blobs and the GC, in process against SQLite made by the migrations: an upload marks
its blob used, and an upload that found its bytes stored while the GC was deleting them checks
again after its commit, so the blob it answers for is stored."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from neffcache import object_deletion
from neffcache.db.models import Blob, utcnow
from neffcache.service.app import create_app
from neffcache.service.context import ServiceContext
from tests.support.in_process import service_settings

DATA = b"a model graph the GC is deleting"
HEX = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[TestClient, ServiceContext]]:
    app = create_app(service_settings(tmp_path, auth_required=False))
    with TestClient(app) as client:
        yield client, app.state.ctx


def test_an_upload_marks_its_blob_used_each_time(service: tuple[TestClient, ServiceContext]) -> None:
    client, ctx = service
    assert client.put(f"/v1/blobs/sha256:{HEX}", content=DATA).status_code == 201
    with ctx.db.session() as session:
        blob = session.get(Blob, f"sha256:{HEX}")
        assert blob is not None and blob.last_used_at is not None
        blob.last_used_at = utcnow() - timedelta(days=30)
    assert client.put(f"/v1/blobs/sha256:{HEX}", content=DATA).status_code == 200
    with ctx.db.session() as session:
        used = session.get(Blob, f"sha256:{HEX}").last_used_at  # type: ignore[union-attr]
        assert used is not None and used > utcnow() - timedelta(minutes=1)


def test_an_upload_during_a_deletion_of_its_bytes_waits_for_it_and_the_blob_stays_stored(
        service: tuple[TestClient, ServiceContext]) -> None:
    client, ctx = service
    assert client.put(f"/v1/blobs/sha256:{HEX}", content=DATA).status_code == 201
    with ctx.db.session() as session:
        session.delete(session.get(Blob, f"sha256:{HEX}"))  # its row gone: only the object is left
        object_deletion.mark(session, [(HEX, len(DATA))], "blob", utcnow() - timedelta(days=2))
    assert object_deletion.begin_deletion(ctx.db, HEX, utcnow())

    answers: list[int] = []
    upload = threading.Thread(target=lambda: answers.append(
        client.put(f"/v1/blobs/sha256:{HEX}", content=DATA).status_code))
    upload.start()
    upload.join(1.0)
    assert upload.is_alive()  # stored (a dedupe) and committed: now waiting for the deletion to end
    # The GC checks after that commit, so it sees the blob's row and keeps the object.
    assert object_deletion.finish_deletion(ctx.db, ctx.store, HEX) is False
    upload.join(30)
    assert answers == [200]
    assert client.head(f"/v1/blobs/sha256:{HEX}").status_code == 200
