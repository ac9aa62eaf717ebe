"""Fail-closed pull: resolve everything, check the runtime, then download and verify.

Layout under DEST:  DEST/<key>/<file name>  (e.g. /neffs/3f2a.../model.neff)

Order of events, so that a pod never starts with a wrong or missing NEFF:
  1. every key and spec is resolved to a published artifact; any miss -> NotFound, nothing written
  2. every artifact's runtime is compared with the local one; any mismatch -> RuntimeMismatch
  3. files download in parallel into DEST/<key>/.<name>.part-<random>, hashed while streaming;
     a file is renamed to its final name only after its size and sha256 matched. A file already
     present under its final name with the right digest is not downloaded again.
  4. the lock file (if asked for) is written last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from neffcache.errors import IntegrityFailure, NotFound, RuntimeMismatch, UsageError
from client.api import NeffcacheClient
from client.runtime import RuntimeResolver
from client.specs import SpecEntry, sha256_file

KEY_RE = re.compile(r"^[0-9a-f]{64}$")
HEX_RE = re.compile(r"^[0-9a-f]{64}$")
LOCK_VERSION = 1


@dataclass
class Wanted:
    """One artifact to pull, and what asked for it."""

    key: str
    artifact: dict[str, Any]
    requested_as: list[str] = field(default_factory=list)  # keys / spec labels
    names: list[str] = field(default_factory=list)  # spec names, where given


@dataclass
class FileResult:
    key: str
    name: str
    path: Path
    sha256: str
    size: int
    status: str = "pending"  # downloaded | present


def safe_file_name(name: str, key: str) -> str:
    """A file name from the service becomes a path under DEST: refuse anything but a plain name."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or name.startswith(".") or len(name) > 255):
        raise IntegrityFailure(f"artifact {key} names a file {name!r} that is not a plain file name; refusing it")
    return name


def resolve(client: NeffcacheClient, keys: list[str], entries: list[SpecEntry]) -> list[Wanted]:
    """Every key and spec -> its artifact. All are asked before failing, so the miss lists them all."""
    wanted: dict[str, Wanted] = {}
    misses: list[str] = []

    def add(key: str, artifact: dict[str, Any], requested: str, name: str | None) -> None:
        item = wanted.setdefault(key, Wanted(key, artifact))
        item.requested_as.append(requested)
        if name and name not in item.names:
            item.names.append(name)

    for key in keys:
        try:
            add(key, client.artifact(key), key, None)
        except NotFound:
            misses.append(f"key {key}")
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
            f"{len(misses)} of {total} not published, nothing was pulled: " + "; ".join(misses),
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


def plan(wanted: list[Wanted], dest: Path) -> list[FileResult]:
    files = []
    for item in wanted:
        if not KEY_RE.match(item.key):
            raise IntegrityFailure(f"the service named an artifact key {item.key!r} that is not 64 hex characters")
        for f in item.artifact["files"]:
            name = safe_file_name(f["name"], item.key)
            sha = str(f["sha256"]).lower()
            if not HEX_RE.match(sha):
                raise IntegrityFailure(f"artifact {item.key} file {name}: sha256 {sha!r} is not a digest")
            files.append(FileResult(item.key, name, dest / item.key / name, sha, int(f["size"])))
    return files


def _already_present(result: FileResult) -> bool:
    """True when the final name already holds the right bytes; a wrong file there is removed,
    so that a failed pull never leaves wrong bytes under a final name."""
    try:
        if not result.path.exists():
            return False
        if result.path.is_file() and result.path.stat().st_size == result.size:
            if sha256_file(result.path) == f"sha256:{result.sha256}":
                return True
        result.path.unlink()
    except OSError as exc:
        raise UsageError(f"cannot replace {result.path}: {exc.strerror or exc}") from None
    return False


def _download(client: NeffcacheClient, result: FileResult, advance: Callable[[int], None],
              stop: threading.Event) -> None:
    if _already_present(result):
        result.status = "present"
        advance(result.size)
        return
    temp = result.path.parent / f".{result.name}.part-{secrets.token_hex(4)}"
    received = 0
    try:
        result.path.parent.mkdir(parents=True, exist_ok=True)
        with client.open_file(result.key, result.name) as (response, announced):
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
        os.replace(temp, result.path)
        result.status = "downloaded"
    except OSError as exc:
        raise UsageError(f"cannot write {result.path}: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)


class _Stopped(Exception):
    """Another download failed: this one stops early (its temp file is removed)."""


def download_all(client: NeffcacheClient, files: list[FileResult], parallel: int,
                 advance: Callable[[int], None]) -> None:
    """Download every file; on the first failure the others stop and that failure is raised."""
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


def write_lock(path: Path, service: str, wanted: list[Wanted], files: list[FileResult], dest: Path) -> None:
    by_key: dict[str, list[FileResult]] = {}
    for f in files:
        by_key.setdefault(f.key, []).append(f)
    doc = {
        "lock_version": LOCK_VERSION,
        "service": service,
        "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dest": str(dest.resolve()),  # each file's path is relative to it
        "artifacts": [
            {
                "key": item.key,
                "names": item.names,
                "requested_as": item.requested_as,
                "target": item.artifact["manifest"].get("target"),
                "compiler": item.artifact["manifest"].get("compiler"),
                "runtime": item.artifact["manifest"].get("runtime"),
                "model": item.artifact["manifest"].get("model"),
                "files": [
                    {"name": f.name, "path": f"{f.key}/{f.name}", "digest": f"sha256:{f.sha256}", "size": f.size}
                    for f in by_key.get(item.key, [])
                ],
            }
            for item in wanted
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.part-{secrets.token_hex(4)}"
    try:
        temp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(temp, path)
    except OSError as exc:
        raise UsageError(f"cannot write the lock file {path}: {exc.strerror or exc}") from None
    finally:
        temp.unlink(missing_ok=True)
