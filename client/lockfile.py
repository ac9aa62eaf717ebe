"""Deployment lock files: exactly which artifacts (and which bytes) a deployment runs.

`neffcache lock --spec deploy.yaml > deploy.lock.json` writes one in CI; `neffcache pull --lock
deploy.lock.json --dest DIR` (or `--into-neuron-cache DIR`) pulls exactly what it names in a pod's
init container, without asking the service to compute any key. Every `pull --dest DIR` also
records what it pulled in DIR/neffcache.lock.json, in the same format.

    {
      "lock_version": 1,
      "service": "http://neffcache:8080",        # where it was resolved (informational)
      "artifacts": [
        {
          "key": "<64 hex>",
          "names": ["bucket-128"],                 # spec names, where given: pull --dest DIR makes
                                                   # DIR/by-name/<name>/<file> reach the files
          "requested_as": ["deploy.yaml spec 1 (bucket-128)"],
          "target": "trn1",
          "compiler": {"name": "neuronx-cc", "version": "2.27.5334.0+2d6a2ba2b", "flags": [...]},
          "runtime": {"name": "neuron-runtime", "version": "2.34.10.0"},
          "model": {"format": "hlo", "digest": "sha256:..."},
          "annotations": {"neuron_cache.module": "...", ...},   # only the neuron_cache.* ones
          "files": [{"name": "model.neff", "digest": "sha256:...", "size": 123, "path": "<key>/model.neff"}]
        }
      ]
    }

`pull --lock` needs only "lock_version", and per artifact "key" and "files" (name, digest, size);
the rest is there for people reading the file and for `pull --into-neuron-cache`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neffcache.client.files import read_text, write_atomically
from neffcache.digests import DIGEST_FORM, bare_hex, digest_of, is_bare_hex, is_digest
from neffcache.errors import UsageError

LOCK_VERSION = 1
LOCK_FILE_NAME = "neffcache.lock.json"  # what `pull --dest DIR` writes into DIR


@dataclass
class LockedFile:
    name: str
    digest: str  # sha256:<hex>
    size: int

    @property
    def sha256(self) -> str:
        return bare_hex(self.digest)


@dataclass
class LockedArtifact:
    key: str
    files: list[LockedFile]
    names: list[str] = field(default_factory=list)
    model_digest: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)


def lock_document(service: str, wanted: list[Any]) -> dict[str, Any]:
    """The lock for resolved artifacts (client.pull.Wanted: key, artifact, names, requested_as);
    each artifact's files as listed in `artifact["files"]`."""
    artifacts = []
    for item in wanted:
        manifest = item.artifact.get("manifest") or {}
        annotations = {k: v for k, v in (item.artifact.get("annotations") or {}).items()
                       if k.startswith("neuron_cache.")}
        artifacts.append({
            "key": item.key,
            "names": item.names,
            "requested_as": item.requested_as,
            "target": manifest.get("target"),
            "compiler": manifest.get("compiler"),
            "runtime": manifest.get("runtime"),
            "model": manifest.get("model"),
            "annotations": annotations,
            "files": [
                {"name": f["name"], "digest": digest_of(str(f["sha256"]).lower()), "size": int(f["size"]),
                 "path": f"{item.key}/{f['name']}"}
                for f in item.artifact["files"]
            ],
        })
    return {"lock_version": LOCK_VERSION, "service": service, "artifacts": artifacts}


def dump(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2) + "\n"


def write_lock(path: Path, doc: dict[str, Any]) -> None:
    write_atomically(path, dump(doc).encode("utf-8"), "the lock file")


def print_lock(doc: dict[str, Any]) -> None:
    sys.stdout.write(dump(doc))
    sys.stdout.flush()


def read_lock(path: Path) -> list[LockedArtifact]:
    """Parse and check a lock file; every problem is a UsageError naming the file and the field."""
    text = read_text(path, "lock file")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"lock file {path}: not valid JSON: {exc}") from None

    def bad(where: str, why: str) -> UsageError:
        return UsageError(f"lock file {path}: {where}: {why}")

    if not isinstance(doc, dict):
        raise bad("top level", "must be an object with lock_version and artifacts")
    version = doc.get("lock_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad("lock_version", "missing or not an integer (is this a neffcache lock file?)")
    if version > LOCK_VERSION:
        raise bad("lock_version", f"{version} is newer than this client reads ({LOCK_VERSION}); upgrade neffcache")
    items = doc.get("artifacts")
    if not isinstance(items, list) or not items:
        raise bad("artifacts", "must be a non-empty list")
    out: list[LockedArtifact] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"artifacts[{i}]"
        if not isinstance(item, dict):
            raise bad(where, "must be an object")
        key = item.get("key")
        if not is_bare_hex(key):
            raise bad(f"{where}.key", f"{key!r} is not an artifact key (64 lowercase hex characters)")
        if key in seen:
            raise bad(f"{where}.key", f"{key} is listed twice")
        seen.add(key)
        files = item.get("files")
        if not isinstance(files, list) or not files:
            raise bad(f"{where}.files", "must be a non-empty list")
        locked_files = []
        names: set[str] = set()
        for j, f in enumerate(files):
            fwhere = f"{where}.files[{j}]"
            if not isinstance(f, dict):
                raise bad(fwhere, "must be an object with name, digest and size")
            name, digest, size = f.get("name"), f.get("digest"), f.get("size")
            if not isinstance(name, str) or not name:
                raise bad(f"{fwhere}.name", "missing")
            if name in names:
                raise bad(f"{fwhere}.name", f"{name!r} is listed twice")
            names.add(name)
            if not is_digest(digest):
                raise bad(f"{fwhere}.digest", f"{digest!r} is not {DIGEST_FORM}")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad(f"{fwhere}.size", f"{size!r} is not a byte count")
            locked_files.append(LockedFile(name, digest, size))
        model = item.get("model")
        if not isinstance(model, dict):
            model = {}
        model_digest = model.get("digest") if isinstance(model.get("digest"), str) else None
        raw_names = item.get("names")
        if not isinstance(raw_names, list):
            raw_names = []
        annotations = item.get("annotations")
        if not isinstance(annotations, dict):
            annotations = {}
        out.append(LockedArtifact(
            key=key, files=locked_files, names=[n for n in raw_names if isinstance(n, str)],
            model_digest=model_digest,
            annotations={k: v for k, v in annotations.items() if isinstance(k, str) and isinstance(v, str)},
        ))
    return out
