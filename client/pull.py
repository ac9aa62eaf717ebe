"""Fail-closed pull: resolve everything, check the runtime, then download and verify.

Layout under DEST:  DEST/<key>/<file name>  (e.g. /neffs/3f2a.../model.neff);
DEST/by-name/<name> for every spec entry's (or lock entry's) `name`, a relative symlink to
`../<key>` (a folder of hard links or copies where the file system has no symlinks), so a pod
finds `/neffs/by-name/encoder-b1/model.neff` without reading the lock; and
DEST/neffcache.lock.json recording what was pulled (see client/lockfile.py).
Layout under a libneuronxla cache (--into-neuron-cache DIR): see restore_into_neuron_cache.

Order of events, so that a pod never starts with a wrong or missing NEFF:
  1. every key and spec is resolved to a published artifact (a lock file's keys are only checked
     for presence, GET /v1/artifacts/{key}, and their files' digests compared with the lock's);
     any miss -> NotFound, any lock digest the service disagrees with -> IntegrityFailure;
     nothing written
  2. every artifact's runtime is compared with the local one, and every NEFF's lnc_size with
     NEURON_LOGICAL_NC_CONFIG when that is set; any mismatch -> RuntimeMismatch
  3. files download in parallel into a staging folder inside DEST (DEST/.neffcache-pull-<random>/,
     the same file system), hashed while streaming. A file already present under its final name
     with the right digest is not downloaded again.
  4. only once every file arrived with its size and sha256 are they renamed into place (a whole
     new DEST/<key> folder in one rename), then the by-name links, then the lock file (atomically).
  A pull that fails at any step (a corrupt object, a full disk, Ctrl-C) undoes what it did and
  removes what it created, DEST itself included if it made it: DEST is left as it was found.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neffcache.client import neuron_cache
from neffcache.client.api import NeffcacheClient
from neffcache.client.files import sync_folder, write_atomically
from neffcache.client.lockfile import LockedArtifact
from neffcache.client.runtime import RuntimeResolver
from neffcache.client.specs import SpecEntry, sha256_file
from neffcache.digests import bare_hex, digest_of, is_bare_hex
from neffcache.errors import IntegrityFailure, NotFound, RuntimeMismatch, UsageError

LNC_ENV = "NEURON_LOGICAL_NC_CONFIG"
BY_NAME = "by-name"  # DEST/by-name/<name> -> ../<key>
STAGING_PREFIX = ".neffcache-pull-"  # DEST/.neffcache-pull-<random>/: one pull's downloads, until they are verified


@dataclass
class Wanted:
    """One artifact to pull, and what asked for it."""

    key: str
    artifact: dict[str, Any]
    requested_as: list[str] = field(default_factory=list)  # keys / spec labels
    names: list[str] = field(default_factory=list)  # spec names, where given
    locked_annotations: dict[str, str] = field(default_factory=dict)  # from a lock file, if pulled by one

    @property
    def annotations(self) -> dict[str, str]:
        """The artifact's annotations; a lock file's neuron_cache.* ones take precedence."""
        return {**(self.artifact.get("annotations") or {}), **self.locked_annotations}


@dataclass
class FileResult:
    key: str
    name: str
    path: Path
    sha256: str
    size: int
    status: str = "pending"  # downloaded | present
    blob: str | None = None  # download GET /v1/blobs/{blob} instead of the artifact's file `name`
    stage: Path | None = None  # where a pull into DEST downloads it to, until everything is verified


def safe_file_name(name: str, key: str) -> str:
    """A file name from the service becomes a path under DEST: refuse anything but a plain name."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or name.startswith(".") or len(name) > 255):
        raise IntegrityFailure(f"artifact {key} names a file {name!r} that is not a plain file name; refusing it")
    return name


def safe_link_name(name: str, what: str) -> str:
    """A spec entry's name becomes the folder DEST/by-name/<name>: refused (never rewritten, so
    the path a pod is configured with is the name its spec says) unless it is one plain folder
    name: no '/', '\\', control characters, no leading '.', not '..', at most 255 bytes."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith(".")
            or any(ord(c) < 32 or ord(c) == 127 for c in name) or len(name.encode("utf-8")) > 255):
        raise UsageError(
            f"{what}: the name {name!r} cannot be a folder name under DEST/{BY_NAME}/ (no '/', '\\', "
            f"'..', leading '.', or control characters; at most 255 bytes); rename it"
        )
    return name


def resolve(client: NeffcacheClient, keys: list[str], entries: list[SpecEntry],
            outcome: str = "nothing was pulled") -> list[Wanted]:
    """Every key and spec -> its artifact. All are asked before failing, so the miss lists them all."""
    wanted: dict[str, Wanted] = {}
    misses: list[str] = []

    def add(key: str, artifact: dict[str, Any], requested: str, name: str | None) -> None:
        item = wanted.setdefault(key, Wanted(key, artifact))
        item.requested_as.append(requested)
        if name and name not in item.names:
            item.names.append(name)

    for key in keys:
        # A key may be a unique prefix (8 hex characters at least): the service answers with the whole key.
        try:
            artifact = client.artifact(key)
        except NotFound:
            misses.append(f"key {key}")
            continue
        full = str(artifact.get("key", ""))
        if not is_bare_hex(full) or not full.startswith(key.lower()):
            raise IntegrityFailure(f"asked for artifact {key}, the service answered with key {full!r}")
        add(full, artifact, key, None)
    for entry in entries:
        try:
            hit = client.lookup(entry.spec)
        except NotFound as exc:
            key = exc.extra.get("key", "?")
            nearest = exc.extra.get("nearest") or []
            why = ""
            if nearest:
                differs = ", ".join(d["field"] for d in nearest[0].get("differs", []))
                why = f"; nearest published differs in {differs}" if differs else ""
            misses.append(f"{entry.label} (key {key}{why})")
            continue
        entry.result = hit
        add(hit["key"], hit["artifact"], entry.label, entry.name)
    if misses:
        total = len(keys) + len(entries)
        raise NotFound(
            f"{len(misses)} of {total} not published, {outcome}: " + "; ".join(misses),
            misses=misses,
        )
    return list(wanted.values())


def check_runtimes(wanted: list[Wanted], resolver: RuntimeResolver) -> None:
    problems = []
    for item in wanted:
        runtime = item.artifact["manifest"]["runtime"]
        name, needed = runtime["name"], runtime["version"]
        local = resolver.local(name)
        if local.version is None:
            problems.append(
                f"artifact {item.key} needs {name} {needed}, but the local {name} version is unknown "
                f"({local.source}); pass --runtime-version or set NEFFCACHE_RUNTIME_VERSION"
            )
        elif local.version != needed:
            problems.append(
                f"artifact {item.key} was built for {name} {needed}, but the local {name} is "
                f"{local.version} (from {local.source})"
            )
    if problems:
        raise RuntimeMismatch("runtime mismatch, nothing was pulled: " + "; ".join(problems))


def resolve_locked(client: NeffcacheClient, locked: list[LockedArtifact], source: str) -> list[Wanted]:
    """The artifacts a lock file names, checked for presence (GET /v1/artifacts/{key}) but never
    looked up by spec: no key is computed. Every file the lock names must be published with the
    lock's digest and size; only those files are pulled."""
    wanted: list[Wanted] = []
    misses: list[str] = []
    disagreements: list[str] = []
    for item in locked:
        try:
            artifact = client.artifact(item.key)
        except NotFound:
            misses.append(f"key {item.key}" + (f" ({', '.join(item.names)})" if item.names else ""))
            continue
        published = {f["name"]: f for f in artifact.get("files", [])}
        chosen = []
        for f in item.files:
            entry = published.get(f.name)
            if entry is None:
                disagreements.append(f"artifact {item.key} has no file {f.name!r} (it has {', '.join(published)})")
                continue
            sha = str(entry.get("sha256", "")).lower()
            if sha != f.sha256:
                disagreements.append(f"{f.name} of artifact {item.key} is published as sha256:{sha}, "
                                     f"the lock says {f.digest}")
            elif int(entry.get("size", -1)) != f.size:
                disagreements.append(f"{f.name} of artifact {item.key} is published with {entry.get('size')} bytes, "
                                     f"the lock says {f.size}")
            chosen.append(entry)
        model_digest = ((artifact.get("manifest") or {}).get("model") or {}).get("digest")
        if item.model_digest and model_digest and item.model_digest != model_digest:
            disagreements.append(f"artifact {item.key} is of model {model_digest}, the lock says {item.model_digest}")
        wanted.append(Wanted(item.key, {**artifact, "files": chosen}, [source], list(item.names),
                             {k: v for k, v in item.annotations.items() if k.startswith("neuron_cache.")}))
    if misses:
        raise NotFound(
            f"{len(misses)} of {len(locked)} artifact(s) in {source} not published, nothing was pulled: "
            + "; ".join(misses),
            misses=misses,
        )
    if disagreements:
        raise IntegrityFailure(f"{source} does not match what is published, nothing was pulled: "
                               + "; ".join(disagreements))
    return wanted


def check_lnc(wanted: list[Wanted], env_value: str | None) -> None:
    """With NEURON_LOGICAL_NC_CONFIG set, every NEFF must have been built for that many logical
    NeuronCores (the lnc_size its header records). A NEFF that records none (0, older compilers)
    passes."""
    if env_value is None or not env_value.strip():
        return
    try:
        local = int(env_value.strip())
    except ValueError:
        raise UsageError(f"{LNC_ENV}={env_value!r} is not an integer") from None
    problems = []
    for item in wanted:
        for f in item.artifact["files"]:
            lnc = (f.get("neff") or {}).get("lnc_size")
            if isinstance(lnc, int) and lnc and lnc != local:
                problems.append(f"{f['name']} of artifact {item.key} was built with lnc_size {lnc}, "
                                f"but {LNC_ENV}={local}")
    if problems:
        raise RuntimeMismatch("logical NeuronCore mismatch, nothing was pulled: " + "; ".join(problems))


class PullPlan(list[FileResult]):
    """What a pull into DEST writes: its files (DEST/<key>/<name>, a list of FileResult as before)
    and `links`, each name that will reach an artifact's folder (DEST/by-name/<name>, name ->
    key). download_all carries it out as one transaction (see _DestTransaction)."""

    def __init__(self, dest: Path, files: list[FileResult], links: dict[str, str]) -> None:
        super().__init__(files)
        self.dest = dest
        self.links = links

    def link_path(self, name: str) -> Path:
        return self.dest / BY_NAME / name


def plan(wanted: list[Wanted], dest: Path) -> PullPlan:
    """Every file's place under DEST, and every name's; refused before anything is written when a
    name is not a plain folder name or two artifacts are given one name."""
    files = []
    links: dict[str, str] = {}
    for item in wanted:
        if not is_bare_hex(item.key):
            raise IntegrityFailure(f"the service named an artifact key {item.key!r} that is not 64 hex characters")
        for f in item.artifact["files"]:
            name = safe_file_name(f["name"], item.key)
            sha = str(f["sha256"]).lower()
            if not is_bare_hex(sha):
                raise IntegrityFailure(f"artifact {item.key} file {name}: sha256 {sha!r} is not a digest")
            files.append(FileResult(item.key, name, dest / item.key / name, sha, int(f["size"])))
        for name in item.names:
            safe_link_name(name, _describe(item))
            if links.setdefault(name, item.key) != item.key:
                raise UsageError(f"the name {name!r} is given to artifacts {links[name]} and {item.key}: "
                                 f"DEST/{BY_NAME}/{name} can reach only one; nothing was pulled")
    return PullPlan(dest, files, links)


def _already_present(result: FileResult) -> bool:
    """True when the final name already holds the right bytes; a wrong file there is removed,
    so that a failed pull never leaves wrong bytes under a final name."""
    try:
        if not result.path.exists():
            return False
        if result.path.is_file() and result.path.stat().st_size == result.size:
            if sha256_file(result.path) == digest_of(result.sha256):
                return True
        result.path.unlink()
    except OSError as exc:
        raise UsageError(f"cannot replace {result.path}: {exc.strerror or exc}") from None
    return False


def _download(client: NeffcacheClient, result: FileResult, advance: Callable[[int], None],
              stop: threading.Event) -> None:
    """Download one file, verified, to its final path, or to its `stage` when it has one (a pull
    into DEST, which then leaves a wrong file under the final name alone until it commits)."""
    if _holds(result) if result.stage is not None else _already_present(result):
        result.status = "present"
        advance(result.size)
        return
    target = result.stage if result.stage is not None else result.path
    temp = target.parent / f".{result.name}.part-{secrets.token_hex(4)}"
    received = 0
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
            digest = hashlib.sha256()
            # The bytes as they arrive off the socket (no re-chunking copy), unless something on
            # the way encoded them: then decoded, since the digest is of the stored bytes.
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            chunks = response.iter_raw() if encoding in ("", "identity") else response.iter_bytes()
            with open(temp, "wb") as out:
                for chunk in chunks:
                    if stop.is_set():
                        raise _Stopped()
                    received += len(chunk)
                    if received > result.size:
                        raise IntegrityFailure(
                            f"{result.name} of artifact {result.key}: more than the {result.size} bytes listed "
                            f"arrived; not written"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                    advance(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        actual = digest.hexdigest()
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
        futures = [pool.submit(_download, client, f, locked_advance, stop) for f in files]
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


# --- into a libneuronxla cache ---------------------------------------------------------------------
@dataclass
class CacheRestore:
    """One artifact restored as DIR/<compiler_dir>/<module>/ of a libneuronxla cache."""

    item: Wanted
    place: neuron_cache.RestoreTarget
    folder: Path
    neff: FileResult
    hlo: FileResult
    status: str = "pending"  # restored | present

    @property
    def flags_path(self) -> Path:
        return self.folder / neuron_cache.FLAGS_FILE

    @property
    def done_path(self) -> Path:
        return self.folder / neuron_cache.DONE_FILE


def _describe(item: Wanted) -> str:
    asked = [r for r in item.requested_as if r != item.key]
    return f"artifact {item.key}" + (f" ({', '.join(asked)})" if asked else "")


def plan_neuron_cache(client: NeffcacheClient, wanted: list[Wanted], root: Path) -> list[CacheRestore]:
    """Where each artifact goes in the cache folder; refused (nothing written) when an artifact
    lacks the neuron_cache annotations or a model.neff, or two would land in one folder."""
    restores: list[CacheRestore] = []
    taken: dict[str, str] = {}
    missing_models: list[str] = []
    for item in wanted:
        what = _describe(item)
        if not is_bare_hex(item.key):
            raise IntegrityFailure(f"the service named an artifact key {item.key!r} that is not 64 hex characters")
        place = neuron_cache.restore_target(item.annotations, what)
        if place.label in taken:
            raise UsageError(
                f"{what} and artifact {taken[place.label]} both restore to {place.label}; pull one of them"
            )
        taken[place.label] = item.key
        neff = next((f for f in item.artifact["files"] if f["name"] == neuron_cache.NEFF_FILE), None)
        if neff is None:
            raise UsageError(f"{what} has no {neuron_cache.NEFF_FILE} to restore into {place.label}")
        sha = str(neff["sha256"]).lower()
        if not is_bare_hex(sha):
            raise IntegrityFailure(f"{what} file {neff['name']}: sha256 {sha!r} is not a digest")
        model = (item.artifact.get("manifest") or {}).get("model") or {}
        model_digest = str(model.get("digest", ""))
        if model.get("format") != "hlo" or not is_bare_hex(bare_hex(model_digest)):
            raise UsageError(f"{what} is not compiled from an HLO module; it has no place in a libneuronxla cache")
        model_size = client.blob_size(model_digest)
        if model_size is None:
            missing_models.append(f"the HLO module {model_digest} of {what}")
            continue
        folder = root / place.compiler_dir / place.module
        restores.append(CacheRestore(
            item, place, folder,
            FileResult(item.key, neuron_cache.NEFF_FILE, folder / neuron_cache.NEFF_FILE, sha, int(neff["size"])),
            FileResult(item.key, place.hlo_file, folder / place.hlo_file, bare_hex(model_digest),
                       model_size, blob=model_digest),
        ))
    if missing_models:
        raise NotFound(
            f"{len(missing_models)} model blob(s) not stored, nothing was pulled: " + "; ".join(missing_models)
        )
    return restores


def _holds(result: FileResult) -> bool:
    try:
        return (result.path.is_file() and result.path.stat().st_size == result.size
                and sha256_file(result.path) == digest_of(result.sha256))
    except OSError:
        return False


def _complete(restore: CacheRestore) -> bool:
    """The entry is already there, done, with exactly these bytes."""
    try:
        if not restore.done_path.is_file():
            return False
        if restore.flags_path.read_bytes() != restore.place.flags_text.encode("utf-8"):
            return False
    except OSError:
        return False
    return _holds(restore.neff) and _holds(restore.hlo)


def restore_into_neuron_cache(client: NeffcacheClient, restores: list[CacheRestore], parallel: int,
                              advance: Callable[[int], None]) -> None:
    """Write every entry: model.neff and the HLO downloaded (sha256 verified while streaming,
    temp file + rename), compile_flags.json (temp file + rename), then model.done LAST, so that
    libneuronxla never takes a half-written entry for a compiled one. An entry already complete
    with the same bytes is left alone; one that differs loses its model.done first."""
    todo = []
    for r in restores:
        if _complete(r):
            r.status = r.neff.status = r.hlo.status = "present"
            advance(r.neff.size + r.hlo.size)
        else:
            todo.append(r)
    for r in todo:
        try:
            r.done_path.unlink(missing_ok=True)
            r.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot write {r.folder}: {exc.strerror or exc}") from None
    download_all(client, [f for r in todo for f in (r.neff, r.hlo)], parallel, advance)
    for r in todo:
        write_atomically(r.flags_path, r.place.flags_text.encode("utf-8"))
        sync_folder(r.folder)
        write_atomically(r.done_path, b"")
        sync_folder(r.folder)
        r.status = "restored"
