"""The service never streams bytes it has not checked (service/streaming.py): a stored object that
no longer hashes to its digest is a 502 (small) or a cut transfer (large), never a 200 with the
wrong bytes; each is counted in `neffcache_corrupt_objects_total` and logged.

The generator alone, then the real service over real HTTP: uvicorn in a thread, on its own
SQLite database and folder store (where the service streams downloads itself)."""

from __future__ import annotations

import hashlib
import io
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from neffcache.db.models import Artifact, ArtifactFile, Job, utcnow
from neffcache.errors import CorruptObject
from neffcache.service.app import create_app
from neffcache.service.context import ServiceContext
from neffcache.service.streaming import verified_chunks
from neffcache.storage import FilesystemObjectStore
from tests.support.api import SAMPLE_MANIFEST, digest_of, error_body
from tests.support.in_process import service_settings
from tests.support.stack import free_port
from tests.support.tamper import overwrite_stored_bytes

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def damaged(data: bytes) -> bytes:
    """The same length, the last byte flipped: only a full hash tells them apart."""
    return data[:-1] + bytes([data[-1] ^ 0x01])


# --- the generator ---------------------------------------------------------------------------


@pytest.mark.parametrize("skip", [0, 1, 4, 5, 9, 22, 23, 100])
def test_sound_bytes_come_through_whole_from_any_offset(skip: int) -> None:
    data = bytes(range(23))
    corrupt: list[str] = []
    out = b"".join(verified_chunks(io.BytesIO(data), sha256(data), corrupt.append, skip=skip, chunk_size=4))
    assert out == data[skip:]
    assert corrupt == []


@pytest.mark.parametrize("skip", [0, 6])
def test_corrupt_bytes_raise_before_the_last_chunk_is_sent(skip: int) -> None:
    data = bytes(range(23))
    stored = damaged(data)
    corrupt: list[str] = []
    stream = io.BytesIO(stored)
    sent = b""
    with pytest.raises(CorruptObject) as caught:
        for chunk in verified_chunks(stream, sha256(data), corrupt.append, skip=skip, chunk_size=4):
            sent += chunk
    assert corrupt == [sha256(stored)]
    assert caught.value.extra == {"digest": sha256(data), "actual": sha256(stored)}
    assert sent == data[skip:20]  # everything but the last chunk, which holds the damage
    assert stream.closed


def test_an_object_of_one_chunk_sends_nothing_when_corrupt() -> None:
    data = b"a short log\n"
    gen = verified_chunks(io.BytesIO(damaged(data)), sha256(data), lambda _: None)
    with pytest.raises(CorruptObject):
        next(gen)


# --- over HTTP -------------------------------------------------------------------------------


@dataclass
class Served:
    url: str
    ctx: ServiceContext
    store: FilesystemObjectStore


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("streaming")
    settings = service_settings(tmp, auth_required=False)
    app = create_app(settings)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        ctx = app.state.ctx
        assert isinstance(ctx.store, FilesystemObjectStore)
        yield Served(f"http://127.0.0.1:{port}", ctx, ctx.store)
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=30) as client:
        yield client


def corrupt_count(http: httpx.Client, found_by: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(f'neffcache_corrupt_objects_total{{found_by="{found_by}"}} '):
            return float(line.split()[-1])
    return 0.0


def assert_cut(http: httpx.Client, path: str, whole: int, caplog: pytest.LogCaptureFixture) -> None:
    """GET `path` fails as a transfer: headers may say 200, but the body ends early and httpx
    raises, so no client can take the bytes for the object. The service logs the cut once, as
    what it is, not as an unhandled error with a traceback."""
    received = 0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neffcache"):
        with pytest.raises(httpx.RemoteProtocolError):
            with http.stream("GET", path) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    received += len(chunk)
    assert received < whole
    service_lines = [r.getMessage() for r in caplog.records if r.name == "neffcache.service.errors"]
    assert len(service_lines) == 1 and "response cut short" in service_lines[0], service_lines
    assert not any(r.exc_info for r in caplog.records), "the cut is not logged as an unhandled error"


def upload(http: httpx.Client, data: bytes) -> str:
    r = http.put(f"/v1/blobs/{digest_of(data)}", content=data)
    assert r.status_code == 201, r.text
    return digest_of(data)


def large(tag: str) -> bytes:
    """3 MiB of bytes unique to the test (several chunks)."""
    seed = f"{tag} {uuid.uuid4()}".encode()
    return b"".join(hashlib.sha512(seed + i.to_bytes(4, "big")).digest() for i in range(3 * MiB // 64))


def test_a_blob_is_verified_as_it_streams(served: Served, http: httpx.Client,
        caplog: pytest.LogCaptureFixture) -> None:
    small, big = f"HloModule small_{uuid.uuid4().hex}".encode(), large("blob")
    small_digest, big_digest = upload(http, small), upload(http, big)
    before = corrupt_count(http, "blob")

    sound = http.get(f"/v1/blobs/{big_digest}")
    assert sound.status_code == 200 and sound.content == big
    assert sound.headers["x-neffcache-sha256"] == sha256(big)

    overwrite_stored_bytes(served.store, sha256(small), damaged(small))
    overwrite_stored_bytes(served.store, sha256(big), damaged(big))
    error_body(http.get(f"/v1/blobs/{small_digest}"), 502, "corrupt_object", sha256(small))
    assert_cut(http, f"/v1/blobs/{big_digest}", len(big), caplog)
    assert corrupt_count(http, "blob") == before + 2


def test_an_artifact_file_is_verified_as_it_streams(served: Served, http: httpx.Client,
        caplog: pytest.LogCaptureFixture) -> None:
    neff, log = large("neff"), b"compiled in 1.0 s\n"
    for data in (neff, log):
        served.store.put(io.BytesIO(data))
    key = uuid.uuid4().hex * 2
    files = [ArtifactFile(name="model.neff", digest=digest_of(neff), size=len(neff)),
             ArtifactFile(name="compile.log", digest=digest_of(log), size=len(log))]
    with served.ctx.db.session() as session:
        session.add(Artifact.from_manifest(key, SAMPLE_MANIFEST, files, compile_seconds=1.0, job_id=None,
                                           annotations=None))
    path = f"/v1/artifacts/{key}/files"
    assert http.get(f"{path}/model.neff").content == neff
    before = corrupt_count(http, "artifact_file")

    overwrite_stored_bytes(served.store, sha256(neff), damaged(neff))
    overwrite_stored_bytes(served.store, sha256(log), damaged(log))
    assert_cut(http, f"{path}/model.neff", len(neff), caplog)
    error_body(http.get(f"{path}/compile.log"), 502, "corrupt_object", sha256(log))
    assert corrupt_count(http, "artifact_file") == before + 2


def test_a_job_log_is_verified_as_it_streams(served: Served, http: httpx.Client,
        caplog: pytest.LogCaptureFixture) -> None:
    short, long = b"error: no such op\n" * 3, large("log")
    jobs = {}
    for data in (short, long):
        served.store.put(io.BytesIO(data))
        jobs[data] = str(uuid.uuid4())
        with served.ctx.db.session() as session:
            session.add(Job(id=jobs[data], key=uuid.uuid4().hex * 2, manifest=SAMPLE_MANIFEST, queue="q",
                            state="failed", attempts=1, max_attempts=1, cancel_requested=False, created_at=utcnow(),
                            log_digest=digest_of(data), log_bytes=len(data), log_tail=data[-100:].decode("latin-1")))
    tail = http.get(f"/v1/jobs/{jobs[long]}/log", params={"offset": MiB + 5})
    assert tail.status_code == 200 and tail.content == long[MiB + 5:]
    # The whole stored log's digest, whatever the offset: what a client checks a cut against.
    assert tail.headers["x-neffcache-sha256"] == sha256(long)
    before = corrupt_count(http, "job_log")

    overwrite_stored_bytes(served.store, sha256(short), damaged(short))
    overwrite_stored_bytes(served.store, sha256(long), damaged(long))
    error_body(http.get(f"/v1/jobs/{jobs[short]}/log"), 502, "corrupt_object", sha256(short))
    error_body(http.get(f"/v1/jobs/{jobs[short]}/log", params={"offset": 10}), 502, "corrupt_object")
    assert_cut(http, f"/v1/jobs/{jobs[long]}/log?offset=5", len(long) - 5, caplog)
    assert corrupt_count(http, "job_log") == before + 3


def test_a_missing_object_is_still_a_502_naming_it(served: Served, http: httpx.Client) -> None:
    data = f"HloModule gone_{uuid.uuid4().hex}".encode()
    digest = upload(http, data)
    served.store.delete(sha256(data))
    # The blob route sees the store lacks it: not found (and a re-upload is taken).
    error_body(http.get(f"/v1/blobs/{digest}"), 404, "not_found")
    job_id = str(uuid.uuid4())
    with served.ctx.db.session() as session:
        session.add(Job(id=job_id, key=uuid.uuid4().hex * 2, manifest=SAMPLE_MANIFEST, queue="q", state="failed",
                        attempts=1, max_attempts=1, cancel_requested=False, created_at=utcnow(),
                        log_digest=digest, log_bytes=len(data)))
    error_body(http.get(f"/v1/jobs/{job_id}/log"), 502, "corrupt_object", "missing from the object store")


def test_a_reupload_repairs_a_corrupt_blob_and_is_counted(served: Served, http: httpx.Client) -> None:
    data = large("repair")
    digest = upload(http, data)
    again = http.put(f"/v1/blobs/{digest}", content=data)
    assert again.status_code == 200 and again.json() == {"digest": digest, "size": len(data), "created": False,
                                                          "repaired": False}
    overwrite_stored_bytes(served.store, sha256(data), damaged(data))
    before = corrupt_count(http, "upload")

    wrong = http.put(f"/v1/blobs/{digest}", content=data[:-1])
    error_body(wrong, 400, "digest_mismatch")
    repaired = http.put(f"/v1/blobs/{digest}", content=data)

    assert repaired.status_code == 201, repaired.text
    assert repaired.json() == {"digest": digest, "size": len(data), "created": True, "repaired": True}
    assert corrupt_count(http, "upload") == before + 1
    assert http.get(f"/v1/blobs/{digest}").content == data
    assert Path(served.store.path_for(sha256(data))).read_bytes() == data
