"""The client's own files (spec files, lock files, restored cache entries): read with one readable
error, and written so that a reader never sees half of one; and the writer that hashes and writes
a download's bytes beside the thread receiving them."""

from __future__ import annotations

import hashlib
import os
import queue
import secrets
import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from neffcache.errors import UsageError


def read_text(path: Path, what: str) -> str:
    """The file's text; a missing or unreadable file is a UsageError naming `what` and the path."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} {path}: cannot read it ({exc})") from None


def write_atomically(path: Path, data: bytes, what: str = "") -> None:
    """Write via a temp file in the same folder, fsynced, then renamed over `path` (its folder is
    made if missing). Any failure is a UsageError naming `what` and the path."""
    temp = path.parent / f".{path.name}.part-{secrets.token_hex(4)}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except OSError as exc:
        named = f"{what} {path}" if what else str(path)
        raise UsageError(f"cannot write {named}: {exc.strerror or exc}") from None
    finally:
        try:
            temp.unlink(missing_ok=True)
        except OSError:  # e.g. the folder is a file: nothing was written there
            pass


def sync_folder(path: Path) -> None:
    """Make renames in a folder durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class HashingWriter:
    """Hashes (sha256) and writes a download's chunks in a thread of its own, so that the thread
    receiving them goes on receiving meanwhile: hashlib and file writes release the GIL, and done
    one after the other on the receiving thread they were 47% of a 1 GiB pull's profile.

    Chunks go over in batches of about `batch_bytes` (so the hand-over costs little per chunk)
    through a queue of at most `queued_batches`: memory stays bounded however slow the disk is
    (by default at most 16 MiB in flight: the queue, the batch being written, the one filling).
    An error in the writing thread (a full disk) is raised by the next `write`, or by `finish`.
    `finish` returns the hex digest once every byte is written and fsynced; `close` (or leaving
    the `with` block) stops the thread, dropping what is still queued. The file is the caller's:
    nothing here closes or removes it."""

    def __init__(self, file: BinaryIO, *, batch_bytes: int = 2 * 1024 * 1024, queued_batches: int = 6) -> None:
        self._file = file
        self._batch_bytes = batch_bytes
        self._batch: list[bytes] = []
        self._batched = 0
        self._queue: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=queued_batches)
        self._digest = hashlib.sha256()
        self._error: BaseException | None = None
        self._dropping = False  # set by close: what is still queued is not written
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="pull-writer", daemon=True)
        self._thread.start()

    def write(self, chunk: bytes) -> None:
        self._raise_failure()
        self._batch.append(chunk)
        self._batched += len(chunk)
        if self._batched >= self._batch_bytes:
            self._hand_over()

    def finish(self) -> str:
        """Wait until every chunk is hashed and written, fsync the file, and return the digest."""
        self._hand_over()
        self._stop()
        self._raise_failure()
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._digest.hexdigest()

    def close(self) -> None:
        """Stop the thread without writing what is still queued (idempotent)."""
        self._dropping = True
        self._batch = []
        self._stop()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _hand_over(self) -> None:
        if self._batch:
            self._queue.put(self._batch)  # waits while `queued_batches` are pending
            self._batch, self._batched = [], 0

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _drain(self) -> None:
        # Runs until the end marker even after a failure, so that a `put` never waits forever.
        while (batch := self._queue.get()) is not None:
            if self._error is not None or self._dropping:
                continue
            try:
                for chunk in batch:
                    self._digest.update(chunk)
                    self._file.write(chunk)
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                self._error = exc
