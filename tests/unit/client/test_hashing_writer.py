"""client/files.py HashingWriter: a download's bytes hashed and written in a thread of their own
while the downloading thread receives, and what download_file (client/download.py) still
guarantees with it: a wrong digest is refused, a failing disk surfaces as an error, and neither
leaves anything behind."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from neffcache.client import download
from neffcache.client.api import NeffcacheClient
from neffcache.client.download import download_file
from neffcache.client.files import HashingWriter
from neffcache.client.pull import FileResult
from neffcache.errors import EXIT_INTEGRITY, EXIT_USAGE, IntegrityFailure, UsageError
from tests.support.api import NEURON_RUNTIME
from tests.support.http_stub import ArtifactService, artifact_body, serve

KEY = "3f2a" + "0" * 60
WEIGHTS = os.urandom(3 * 1024 * 1024 + 123)  # several batches, and a last one that is not full


class FullDisk(io.BytesIO):
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, room: int) -> None:
        super().__init__()
        self.room = room

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pull-writer"]


def test_every_chunk_is_written_in_order_and_hashed(tmp_path: Path) -> None:
    # Small batches and a queue of one: the receiving side waits on the writer again and again.
    target = tmp_path / "out.bin"
    with open(target, "wb") as out, HashingWriter(out, batch_bytes=100_000, queued_batches=1) as writer:
        for chunk in pieces(WEIGHTS, 65_536):
            writer.write(chunk)
        digest = writer.finish()
    assert digest == hashlib.sha256(WEIGHTS).hexdigest()
    assert target.read_bytes() == WEIGHTS
    assert writer_threads() == []


def test_nothing_written_is_still_a_digest_and_an_empty_file(tmp_path: Path) -> None:
    target = tmp_path / "empty.bin"
    with open(target, "wb") as out, HashingWriter(out) as writer:
        assert writer.finish() == hashlib.sha256(b"").hexdigest()
    assert target.read_bytes() == b""


def test_an_error_in_the_writing_thread_is_raised_to_the_receiving_one() -> None:
    disk = FullDisk(room=200_000)
    with pytest.raises(OSError) as raised, HashingWriter(disk, batch_bytes=65_536, queued_batches=1) as writer:
        for chunk in pieces(WEIGHTS, 65_536):
            writer.write(chunk)
        writer.finish()
    assert raised.value.errno == errno.ENOSPC
    assert disk.tell() <= 200_000
    assert writer_threads() == []  # the thread ended; nothing waits on it


def test_an_error_in_the_last_batch_is_raised_by_finish() -> None:
    writer = HashingWriter(FullDisk(room=10), batch_bytes=1 << 30)
    writer.write(b"more than ten bytes")  # still in the batch: nothing handed over yet
    with pytest.raises(OSError, match="No space left"):
        writer.finish()
    writer.close()  # after finish: nothing more to do
    assert writer_threads() == []


def test_close_drops_what_is_still_queued() -> None:
    release = threading.Event()

    class SlowFile(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            release.wait(10)
            return super().write(data)

    slow: BinaryIO = SlowFile()
    writer = HashingWriter(slow, batch_bytes=1, queued_batches=2)
    for chunk in (b"a", b"b", b"c"):  # one being written, two queued
        writer.write(chunk)
    closer = threading.Thread(target=writer.close)
    closer.start()  # waits for the batch being written, and for room in the queue for its end marker
    while not writer._dropping:
        time.sleep(0.001)
    release.set()
    closer.join(10)
    assert slow.getvalue() == b"a"  # the batch already being written; not the two queued
    assert writer_threads() == []


# --- through download_file ----------------------------------------------------------------------
def served(**attributes: object) -> type[ArtifactService]:
    files = {"weights.bin": WEIGHTS}
    return type("Service", (ArtifactService,), {"artifact": artifact_body(KEY, NEURON_RUNTIME, files),
                                                 "contents": files, **attributes})


def fetch(url: str, result: FileResult) -> None:
    with NeffcacheClient(url, timeout_s=10) as client:
        download_file(client, result, lambda n: None, threading.Event())


def test_bytes_that_do_not_hash_to_the_listed_digest_are_refused_and_not_left(tmp_path: Path) -> None:
    listed = hashlib.sha256(b"other bytes").hexdigest()
    result = FileResult(KEY, "weights.bin", tmp_path / KEY / "weights.bin", listed, len(WEIGHTS))
    with serve(served(vouch=False)) as url:  # the service names no digest: only the client's hash can tell
        with pytest.raises(IntegrityFailure) as raised:
            fetch(url, result)
    assert raised.value.exit_code == EXIT_INTEGRITY
    assert f"hash to sha256 {hashlib.sha256(WEIGHTS).hexdigest()}" in raised.value.detail
    assert list(result.path.parent.iterdir()) == []  # neither the file nor its temp file
    assert writer_threads() == []


def test_a_disk_that_fills_up_mid_download_is_an_error_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class FillingDisk(HashingWriter):
        def __init__(self, file: BinaryIO, **options: int) -> None:
            real_write = file.write

            def write(data: bytes) -> int:
                if file.tell() + len(data) > 1024 * 1024:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_write(data)

            file.write = write  # type: ignore[method-assign]
            super().__init__(file, batch_bytes=65_536, queued_batches=1)

    monkeypatch.setattr(download, "HashingWriter", FillingDisk)
    result = FileResult(KEY, "weights.bin", tmp_path / KEY / "weights.bin", hashlib.sha256(WEIGHTS).hexdigest(),
                        len(WEIGHTS))
    received: list[int] = []
    with serve(served()) as url:
        with NeffcacheClient(url, timeout_s=10) as client, pytest.raises(UsageError) as raised:
            download_file(client, result, received.append, threading.Event())
    assert raised.value.exit_code == EXIT_USAGE
    assert "No space left on device" in raised.value.detail and "weights.bin" in raised.value.detail
    assert list(result.path.parent.iterdir()) == []
    assert sum(received) < len(WEIGHTS)  # it stopped receiving once the disk failed
    assert writer_threads() == []


def test_progress_is_reported_in_steps_and_adds_up_to_the_size(tmp_path: Path) -> None:
    result = FileResult(KEY, "weights.bin", tmp_path / KEY / "weights.bin", hashlib.sha256(WEIGHTS).hexdigest(),
                        len(WEIGHTS))
    received: list[int] = []
    with serve(served()) as url:
        with NeffcacheClient(url, timeout_s=10) as client:
            download_file(client, result, received.append, threading.Event())
    assert result.path.read_bytes() == WEIGHTS
    assert sum(received) == len(WEIGHTS)
    assert len(received) <= len(WEIGHTS) // download.PROGRESS_STEP_BYTES + 2  # not one call per 64 KiB chunk
