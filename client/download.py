"""Downloading a pull's files into DEST, all or nothing.

Files download in parallel into a staging folder inside DEST (DEST/.neffcache-pull-<random>/,
the same file system), hashed while streaming; only once every file arrived with its size and
sha256 are they renamed into place, then the by-name links, then the lock file. A failure at
any step undoes what the pull did (see client/pull.py for the whole order of events).
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import httpx

from neffcache.client.api import NeffcacheClient
from neffcache.client.files import HashingWriter, sync_folder
from neffcache.client.pull import BY_NAME, STAGING_PREFIX, FileResult, PullPlan, Wanted, plan
from neffcache.client.transfer_errors import ended_early
from neffcache.digests import digest_of
from neffcache.errors import IntegrityFailure, UsageError

# A progress bar is moved on every this many bytes, not on every chunk off the socket: each move
# takes the bar's lock and records a speed sample.
PROGRESS_STEP_BYTES = 1024 * 1024
# httpcore reads a response 64 KiB at a time, and h11 and httpcore copy each read four times on its way
# here; reads of 256 KiB took a third off the CPU a download costs (0.52 -> 0.35 s per GiB
# received; 1 MiB reads cost more again, the copies no longer fitting in a core's cache). It is a
# class attribute of httpcore's HTTP/1.1 connection: set for the whole process, once a download
# starts (see `_read_larger_pieces`).
SOCKET_READ_BYTES = 256 * 1024


def holds(result: FileResult) -> bool:
    try:
        return result.path.is_file() and result.path.stat().st_size == result.size and _hashes_right(result)
    except OSError:
        return False


def _hashes_right(result: FileResult) -> bool:
    """The file at the result's final path hashes to its sha256."""
    from neffcache.client.specs import sha256_file  # only when a file is there: specs.py imports yaml

    return sha256_file(result.path) == digest_of(result.sha256)


def present(result: FileResult) -> bool:
    """True when the final name already holds the right bytes; a wrong file there is removed,
    so that a failed pull never leaves wrong bytes under a final name."""
    try:
        if not result.path.exists():
            return False
        if result.path.is_file() and result.path.stat().st_size == result.size:
            if _hashes_right(result):
                return True
        result.path.unlink()
    except OSError as exc:
        raise UsageError(f"cannot replace {result.path}: {exc.strerror or exc}") from None
    return False


def download_file(client: NeffcacheClient, result: FileResult, advance: Callable[[int], None],
              stop: threading.Event) -> None:
    """Download one file, verified, to its final path, or to its `stage` when it has one (a pull
    into DEST, which then leaves a wrong file under the final name alone until it commits)."""
    if holds(result) if result.stage is not None else present(result):
        result.status = "present"
        advance(result.size)
        return
    target = result.stage if result.stage is not None else result.path
    temp = target.parent / f".{target.name}.part-{secrets.token_hex(4)}"
    received = 0
    _read_larger_pieces()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        opened = (
            client.open_blob(result.blob, result.name) if result.blob else client.open_file(result.key, result.name)
        )
        with opened as (response, announced):
            if announced and announced.lower() != result.sha256:
                raise IntegrityFailure(
                    f"{result.name} of artifact {result.key}: the service announces sha256 {announced}, "
                    f"the artifact lists {result.sha256}; nothing written"
                )
            # The bytes as they arrive off the socket (no re-chunking copy), unless something on
            # the way encoded them: then decoded, since the digest is of the stored bytes.
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            chunks = response.iter_raw() if encoding in ("", "identity") else response.iter_bytes()
            # This thread receives; another hashes and writes (HashingWriter), at the same time.
            with open(temp, "wb") as out, HashingWriter(out) as writer:
                unreported = 0  # bytes received but not yet given to `advance`
                try:
                    for chunk in chunks:
                        if stop.is_set():
                            raise _Stopped()
                        received += len(chunk)
                        if received > result.size:
                            raise IntegrityFailure(
                                f"{result.name} of artifact {result.key}: more than the {result.size} bytes listed "
                                f"arrived; not written"
                            )
                        writer.write(chunk)
                        unreported += len(chunk)
                        if unreported >= PROGRESS_STEP_BYTES:
                            advance(unreported)
                            unreported = 0
                except httpx.TransportError as exc:
                    raise ended_early(exc, response, what=f"{result.name} of artifact {result.key}",
                                      received=received, size=result.size, outcome="not written",
                                      file=result.name, key=result.key, expected=result.sha256) from None
                advance(unreported)
                actual = writer.finish()
        if received != result.size:
            raise IntegrityFailure(
                f"{result.name} of artifact {result.key}: {received} bytes arrived, {result.size} listed; not written"
            )
        if actual != result.sha256:
            raise IntegrityFailure(
                f"{result.name} of artifact {result.key}: downloaded bytes hash to sha256 {actual}, "
                f"expected {result.sha256}; not written",
                file=result.name, key=result.key, expected=result.sha256, actual=actual,
            )
        os.replace(temp, target)
        result.status = "downloaded"
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)


def _read_larger_pieces() -> None:
    """Socket reads of SOCKET_READ_BYTES from now on, for every HTTP/1.1 response (httpx imports
    httpcore when its first client is made; not before, for a faster start)."""
    import httpcore

    httpcore.HTTP11Connection.READ_NUM_BYTES = max(httpcore.HTTP11Connection.READ_NUM_BYTES, SOCKET_READ_BYTES)


class _Stopped(Exception):
    """Another download failed: this one stops early (its temp file is removed)."""


def download_all(client: NeffcacheClient, files: list[FileResult], parallel: int,
                 advance: Callable[[int], None], *, lock_path: Path | None = None,
                 lock_doc: dict[str, Any] | None = None) -> None:
    """Download every file; on the first failure the others stop and that failure is raised.

    A PullPlan (from `plan`) is pulled into its DEST as one transaction: staged, verified, then
    renamed into place with its by-name links and, when `lock_path` and `lock_doc` are given, the
    lock file; any failure leaves DEST as it was found."""
    if isinstance(files, PullPlan):
        _DestTransaction(files).run(client, parallel, advance, lock_path, lock_doc)
        return
    _download_parallel(client, files, parallel, advance)


def pull_to_dest(client: NeffcacheClient, wanted: list[Wanted], dest: Path, parallel: int,
                 advance: Callable[[int], None], lock_doc: dict[str, Any] | None = None,
                 lock_path: Path | None = None) -> PullPlan:
    """plan + download_all, with the lock file (DEST/neffcache.lock.json unless `lock_path`)
    written inside the transaction when `lock_doc` is given."""
    from neffcache.client.lockfile import LOCK_FILE_NAME

    files = plan(wanted, dest)
    download_all(client, files, parallel, advance,
                 lock_path=(lock_path or dest / LOCK_FILE_NAME) if lock_doc is not None else None, lock_doc=lock_doc)
    return files


def _download_parallel(client: NeffcacheClient, files: list[FileResult], parallel: int,
                       advance: Callable[[int], None]) -> None:
    stop = threading.Event()
    lock = threading.Lock()

    def locked_advance(n: int) -> None:
        with lock:
            advance(n)

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="pull") as pool:
        futures = [pool.submit(download_file, client, f, locked_advance, stop) for f in files]
        try:
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: stop the downloads (each removes its temp file)
            stop.set()
            for f in futures:
                f.cancel()
            raise
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is not None:
            stop.set()
            for f in futures:
                f.cancel()
    if failed is not None:
        raise failed.exception()  # type: ignore[misc]


class _DestTransaction:
    """One pull into DEST, all or nothing.

    Downloads go to DEST/.neffcache-pull-<random>/files/<key>/<name> (same file system, so the
    moves into place are renames). Only once every file is verified: each new DEST/<key> folder
    is renamed into place whole; into a folder that exists, each file is renamed in (a wrong
    file it replaces is first moved aside into the staging folder); then DEST/by-name/<name>
    links (built in the staging folder, renamed in the same way); then the lock file. Each
    change records its undo; on any failure they are undone newest first, the staging folder
    is removed, and so are the folders this pull created (DEST itself if it did not exist).
    Nothing this pull did not create or replace is touched."""

    def __init__(self, plan: PullPlan) -> None:
        self.plan = plan
        self.dest = plan.dest
        self.staging: Path | None = None
        self.created: list[Path] = []  # folders this pull made, outermost first
        self.undo: list[Callable[[], None]] = []
        self._aside = 0

    def run(self, client: NeffcacheClient, parallel: int, advance: Callable[[int], None],
            lock_path: Path | None, lock_doc: dict[str, Any] | None) -> None:
        try:
            staging = self._begin()
            for result in self.plan:
                result.stage = staging / "files" / result.key / result.name
            for folder in {r.stage.parent for r in self.plan if r.stage is not None}:
                self._os(folder.mkdir, folder, parents=True, exist_ok=True)
            _download_parallel(client, self.plan, parallel, advance)
            self._commit_files()
            self._commit_links()
            if lock_path is not None and lock_doc is not None:
                from neffcache.client.lockfile import write_lock

                write_lock(lock_path, lock_doc)  # atomic, and last: nothing after it can fail
        except BaseException:
            self._rollback()
            raise
        finally:
            if self.staging is not None:
                shutil.rmtree(self.staging, ignore_errors=True)
        for folder in {self.dest, self.dest / BY_NAME, *(self.dest / r.key for r in self.plan)}:
            sync_folder(folder)  # the renames, durable (a missing folder is skipped)

    # --- steps -----------------------------------------------------------------------------
    def _begin(self) -> Path:
        missing = []
        folder = self.dest
        while not os.path.lexists(folder):
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # made by someone else meanwhile: not ours to remove
                continue
            except OSError as exc:
                raise UsageError(f"cannot create {folder}: {exc.strerror or exc}") from None
            self.created.append(folder)
        try:
            self.staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.dest))
        except OSError as exc:
            raise UsageError(f"cannot write into {self.dest}: {exc.strerror or exc}") from None
        return self.staging

    def _commit_files(self) -> None:
        assert self.staging is not None
        staged: dict[str, list[FileResult]] = {}
        for result in self.plan:
            if result.status == "downloaded":
                staged.setdefault(result.key, []).append(result)
        for key, results in staged.items():
            final = self.dest / key
            if not os.path.lexists(final):
                source = self.staging / "files" / key
                self._os(os.rename, final, source, final)
                self.undo.append(functools.partial(shutil.rmtree, final))
                continue
            for result in results:
                assert result.stage is not None
                self._put(result.stage, result.path)

    def _commit_links(self) -> None:
        if not self.plan.links:
            return
        assert self.staging is not None
        links = self.dest / BY_NAME
        if not os.path.lexists(links):
            self._os(links.mkdir, links)
            self.undo.append(links.rmdir)
        staged_links = self.staging / BY_NAME
        self._os(staged_links.mkdir, staged_links)
        for name, key in self.plan.links.items():
            link = links / name
            target = os.path.join(os.pardir, key)
            if os.path.islink(link) and os.readlink(link) == target:
                continue  # already reaches this artifact
            staged = staged_links / name
            try:
                os.symlink(target, staged, target_is_directory=True)
            except (OSError, NotImplementedError):  # no symlinks here: a folder of links or copies
                self._os(staged.mkdir, staged)
                for result in self.plan:
                    if result.key == key:
                        self._link_or_copy(result.path, staged / result.name)
            self._put(staged, link)

    # --- helpers ---------------------------------------------------------------------------
    def _put(self, new: Path, final: Path) -> None:
        """Rename `new` to `final`; whatever `final` was is moved aside first, to be put back on
        rollback (and removed with the staging folder on success)."""
        assert self.staging is not None
        if os.path.lexists(final):
            self._aside += 1
            aside = self.staging / "replaced" / str(self._aside)
            self._os(aside.parent.mkdir, aside.parent, exist_ok=True)
            self._os(os.rename, final, final, aside)
            self.undo.append(lambda: os.rename(aside, final))
        self._os(os.rename, final, new, final)
        self.undo.append(lambda: _remove(final))

    @staticmethod
    def _link_or_copy(source: Path, target: Path) -> None:
        try:
            os.link(source, target)
        except OSError:
            try:
                shutil.copy2(source, target)
            except OSError as exc:
                raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None

    @staticmethod
    def _os(call: Callable[..., Any], path: Path, *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None

    def _rollback(self) -> None:
        for undo in reversed(self.undo):
            try:
                undo()
            except OSError:
                pass  # best effort: put back as much as can be
        self.undo.clear()
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty: something else was put there meanwhile


def _remove(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)
