"""Restoring pulled NEFFs into a libneuronxla persistent cache (`pull --into-neuron-cache DIR`),
so frameworks that use that cache find them with no code change (see client/neuron_cache.py for
the cache's layout)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from neffcache.client import neuron_cache
from neffcache.client.api import NeffcacheClient
from neffcache.client.download import download_all, holds
from neffcache.client.files import sync_folder, write_atomically
from neffcache.client.pull import FileResult, Wanted, describe
from neffcache.digests import bare_hex, is_bare_hex
from neffcache.errors import IntegrityFailure, NotFound, UsageError


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


def plan_neuron_cache(client: NeffcacheClient, wanted: list[Wanted], root: Path) -> list[CacheRestore]:
    """Where each artifact goes in the cache folder; refused (nothing written) when an artifact
    lacks the neuron_cache annotations or a model.neff, or two would land in one folder."""
    restores: list[CacheRestore] = []
    taken: dict[str, str] = {}
    missing_models: list[str] = []
    for item in wanted:
        what = describe(item)
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


def _complete(restore: CacheRestore) -> bool:
    """The entry is already there, done, with exactly these bytes."""
    try:
        if not restore.done_path.is_file():
            return False
        if restore.flags_path.read_bytes() != restore.place.flags_text.encode("utf-8"):
            return False
    except OSError:
        return False
    return holds(restore.neff) and holds(restore.hlo)


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
