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

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neffcache.client.api import NeffcacheClient
from neffcache.client.lockfile import LockedArtifact
from neffcache.client.runtime import RuntimeResolver
from neffcache.digests import is_bare_hex
from neffcache.errors import IntegrityFailure, NotFound, OriginRefused, RuntimeMismatch, UsageError
from neffcache.file_names import check_file_name, check_unique_file_names

if TYPE_CHECKING:  # client/specs.py (yaml) is imported only by commands that read spec files
    from neffcache.client.specs import SpecEntry

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


def safe_file_name(name: Any, key: str, outcome: str = "nothing was pulled",
                   rule: Callable[[str], str] = check_file_name) -> str:
    """A file name from the service becomes a path under DEST: refused unless it is one the
    service takes at publish (neffcache.file_names.check_file_name, the same rule; a folder artifact's
    paths: `rule` check_file_path): no '.', '..', separator, NUL, leading '.' or '-', Windows
    device name, ... `outcome` ends the message."""
    try:
        if not isinstance(name, str):
            raise ValueError(f"{name!r} is not a file name")
        return rule(name)
    except ValueError as exc:
        raise IntegrityFailure(f"artifact {key} names a file that would be unsafe on disk, {outcome}: "
                               f"{exc}", file=str(name), key=key) from None


def safe_file_names(names: list[str], key: str, outcome: str = "nothing was pulled") -> None:
    """An artifact's file names, each safe (`safe_file_name`), must name as many files on every
    file system: unique ignoring case too (neffcache.spec.check_unique_file_names)."""
    try:
        check_unique_file_names(names)
    except ValueError as exc:
        raise IntegrityFailure(f"artifact {key}: {exc}: on a case-insensitive file system they would be one "
                               f"file, {outcome}", key=key) from None


def check_file_names(item: Wanted, outcome: str = "nothing was pulled") -> None:
    """Every file name of a resolved artifact safe on disk (`safe_file_name`, `safe_file_names`):
    what `plan` requires before a pull writes anything, and `neffcache lock` before it records them
    (a lock `pull --lock` would refuse is not written)."""
    safe_file_names([safe_file_name(f["name"], item.key, outcome) for f in item.artifact["files"]], item.key,
                    outcome)


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


def add_wanted(wanted: dict[str, Wanted], key: str, artifact: dict[str, Any], requested: str,
               name: str | None) -> None:
    """Record that `requested` (a key or spec label, with its spec `name`) resolved to `key`: one
    Wanted per key, however many ask for it."""
    item = wanted.setdefault(key, Wanted(key, artifact))
    item.requested_as.append(requested)
    if name and name not in item.names:
        item.names.append(name)


def resolve(client: NeffcacheClient, keys: list[str], entries: list[SpecEntry],
            outcome: str = "nothing was pulled") -> list[Wanted]:
    """Every key and spec -> its artifact. All are asked before failing, so the miss lists them all."""
    wanted: dict[str, Wanted] = {}
    misses: list[str] = []
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
        add_wanted(wanted, full, artifact, key, None)
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
        add_wanted(wanted, hit["key"], hit["artifact"], entry.label, entry.name)
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


def origin_of(artifact: dict[str, Any]) -> str | None:
    """Who made an artifact's bytes: "farm" or "pushed" (None from a service too old to say)."""
    kind = (artifact.get("origin") or {}).get("kind")
    return kind if isinstance(kind, str) else None


def check_origin(wanted: list[Wanted], required: str | None) -> None:
    """With `required` ("farm" or "pushed"), every artifact must have that origin; one whose
    origin is not recorded is refused too (fail closed)."""
    if required is None:
        return
    problems = []
    for item in wanted:
        origin = origin_of(item.artifact)
        if origin != required:
            by = (item.artifact.get("origin") or {}).get("token")
            made = f"was {origin}" + (f" by token {by!r}" if by else "") if origin else "has no recorded origin"
            problems.append(f"artifact {item.key} {made}")
    if problems:
        raise OriginRefused(f"--require-origin {required}, nothing was pulled: " + "; ".join(problems))


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


def describe(item: Wanted) -> str:
    asked = [r for r in item.requested_as if r != item.key]
    return f"artifact {item.key}" + (f" ({', '.join(asked)})" if asked else "")


def plan(wanted: list[Wanted], dest: Path) -> PullPlan:
    """Every file's place under DEST, and every name's; refused before anything is written when a
    name is not a plain folder name or two artifacts are given one name."""
    files = []
    links: dict[str, str] = {}
    for item in wanted:
        if not is_bare_hex(item.key):
            raise IntegrityFailure(f"the service named an artifact key {item.key!r} that is not 64 hex characters")
        check_file_names(item)
        for f in item.artifact["files"]:
            name = f["name"]
            sha = str(f["sha256"]).lower()
            if not is_bare_hex(sha):
                raise IntegrityFailure(f"artifact {item.key} file {name}: sha256 {sha!r} is not a digest")
            files.append(FileResult(item.key, name, dest / item.key / name, sha, int(f["size"])))
        for name in item.names:
            safe_link_name(name, describe(item))
            if links.setdefault(name, item.key) != item.key:
                raise UsageError(f"the name {name!r} is given to artifacts {links[name]} and {item.key}: "
                                 f"DEST/{BY_NAME}/{name} can reach only one; nothing was pulled")
    return PullPlan(dest, files, links)
