"""libneuronxla's persistent compile cache (torch-neuronx, NxD Inference, vLLM-neuron): read it, and
restore entries into it.

The cache lives at NEURON_COMPILE_CACHE_URL (default /var/tmp/neuron-compile-cache) laid out as

    <DIR>/neuronxcc-<compiler version, with +build>/MODULE_<graph key>+<flags hash>/
        model.hlo_module.pb    the HLO module (older releases: model.hlo.pb)
        compile_flags.json     a JSON list of the neuronx-cc flags
        model.neff             the compiled graph
        model.done             written last: the entry is complete

A graph-extraction run (NEURON_EXTRACT_GRAPHS_ONLY=1, as neuron_parallel_compile does) leaves
entries with the HLO and the flags but no NEFF. Anything else in DIR (lock files, logs, other
folders) is ignored.

When neffcache compiles or publishes an entry it keeps where the entry came from as annotations
of the job and the artifact (not part of the key), so that `pull --into-neuron-cache` can put it
back where libneuronxla looks for it:

    neuron_cache.module         the MODULE_ folder name
    neuron_cache.compiler_dir   the neuronxcc-... folder name
    neuron_cache.compile_flags  compile_flags.json's text, verbatim
    neuron_cache.hlo_file       the HLO's file name (model.hlo_module.pb or model.hlo.pb)

Standard library only; nothing here talks to the service.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neffcache.errors import UsageError
from neffcache.toolchain import NEURON_RUNTIME, VERSION_CHARS

COMPILER_DIR_PREFIX = "neuronxcc-"
HLO_FILE = "model.hlo_module.pb"
OLD_HLO_FILE = "model.hlo.pb"
HLO_FILES = (HLO_FILE, OLD_HLO_FILE)  # first found wins
FLAGS_FILE = "compile_flags.json"
NEFF_FILE = "model.neff"
DONE_FILE = "model.done"

ANNOTATION_MODULE = "neuron_cache.module"
ANNOTATION_COMPILER_DIR = "neuron_cache.compiler_dir"
ANNOTATION_FLAGS = "neuron_cache.compile_flags"
ANNOTATION_HLO_FILE = "neuron_cache.hlo_file"
REQUIRED_ANNOTATIONS = (ANNOTATION_MODULE, ANNOTATION_COMPILER_DIR, ANNOTATION_FLAGS)

# Folder names become paths on restore, so only plain names are accepted (no "/", no "..").
_COMPILER_DIR_RE = re.compile(rf"^neuronxcc-(?P<version>{VERSION_CHARS})$")
_MODULE_RE = re.compile(r"^MODULE_[0-9A-Za-z_+.=-]{1,200}$")


@dataclass
class CacheEntry:
    """One MODULE_ folder of the cache."""

    root: Path
    compiler_dir: str  # neuronxcc-2.27.5334.0+2d6a2ba2b
    compiler_version: str  # 2.27.5334.0+2d6a2ba2b
    module: str  # MODULE_1234+abcd1234
    hlo_path: Path | None
    flags: list[str] | None
    flags_text: str | None
    has_neff: bool
    has_done: bool
    problem: str | None = None  # why this entry cannot be compiled or published

    @property
    def path(self) -> Path:
        return self.root / self.compiler_dir / self.module

    @property
    def label(self) -> str:
        return f"{self.compiler_dir}/{self.module}"

    @property
    def neff_path(self) -> Path:
        return self.path / NEFF_FILE

    @property
    def has_neff_and_done(self) -> bool:
        return self.has_neff and self.has_done

    def annotations(self) -> dict[str, str]:
        """What travels with the job and the artifact, so a pull can restore this entry."""
        assert self.flags_text is not None and self.hlo_path is not None
        return {
            ANNOTATION_MODULE: self.module,
            ANNOTATION_COMPILER_DIR: self.compiler_dir,
            ANNOTATION_FLAGS: self.flags_text,
            ANNOTATION_HLO_FILE: self.hlo_path.name,
        }


def compiler_version_of(folder_name: str) -> str | None:
    """'neuronxcc-2.27.5334.0+2d6a2ba2b' -> '2.27.5334.0+2d6a2ba2b'; None for any other name."""
    m = _COMPILER_DIR_RE.match(folder_name)
    return m["version"] if m else None


def is_module_name(name: str) -> bool:
    return bool(_MODULE_RE.match(name)) and ".." not in name


def _read_flags(path: Path) -> tuple[list[str] | None, str | None, str | None]:
    """(flags, the file's text, problem)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, None, f"has no {FLAGS_FILE}"
    except (OSError, UnicodeDecodeError) as exc:
        return None, None, f"{FLAGS_FILE}: cannot read it ({exc})"
    try:
        flags = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, text, f"{FLAGS_FILE}: not valid JSON ({exc})"
    if not isinstance(flags, list) or not all(isinstance(f, str) for f in flags):
        return None, text, f"{FLAGS_FILE}: not a JSON list of strings"
    return flags, text, None


def list_entries(root: Path) -> list[CacheEntry]:
    """Every neuronxcc-*/MODULE_* folder under root, sorted by compiler folder then module."""
    if not root.is_dir():
        raise UsageError(f"{root}: no such folder (a libneuronxla cache, e.g. /var/tmp/neuron-compile-cache)")
    entries = []
    try:
        compiler_dirs = sorted(p for p in root.iterdir() if p.is_dir() and compiler_version_of(p.name))
        for cdir in compiler_dirs:
            version = compiler_version_of(cdir.name)
            assert version is not None
            for mdir in sorted(p for p in cdir.iterdir() if p.is_dir() and is_module_name(p.name)):
                hlo = next((mdir / n for n in HLO_FILES if (mdir / n).is_file()), None)
                flags, text, problem = _read_flags(mdir / FLAGS_FILE)
                if hlo is None:
                    problem = f"has no {HLO_FILE} (nor {OLD_HLO_FILE})"
                entries.append(CacheEntry(
                    root=root, compiler_dir=cdir.name, compiler_version=version, module=mdir.name,
                    hlo_path=hlo, flags=flags, flags_text=text,
                    has_neff=(mdir / NEFF_FILE).is_file(), has_done=(mdir / DONE_FILE).is_file(),
                    problem=problem,
                ))
    except OSError as exc:
        raise UsageError(f"{root}: cannot read the cache folder ({exc.strerror or exc})") from None
    return entries


def flags_target(flags: list[str]) -> str | None:
    """The value of a `--target=T` / `--target T` among the flags (the last one), else None."""
    found = None
    for i, flag in enumerate(flags):
        if flag.startswith("--target="):
            found = flag.split("=", 1)[1]
        elif flag == "--target" and i + 1 < len(flags):
            found = flags[i + 1]
    return found


def entry_spec(entry: CacheEntry, target: str | None, runtime_version: str | None,
               namespace: str | None = None) -> dict[str, Any]:
    """The compile spec of an entry: format hlo, no inputs (the HLO fixes them), neuronx-cc at the
    folder's version with compile_flags.json's flags. The model digest is filled in later.

    The target is --target, else the `--target` inside the flags; neither is a usage error, and
    so is a --target that disagrees with the flags (the service would refuse it)."""
    if entry.problem:
        raise UsageError(f"{entry.label}: {entry.problem}")
    assert entry.flags is not None and entry.hlo_path is not None
    in_flags = flags_target(entry.flags)
    if target and in_flags and target != in_flags:
        raise UsageError(f"{entry.label}: --target {target} disagrees with --target={in_flags} in its {FLAGS_FILE}")
    chosen = target or in_flags
    if not chosen:
        raise UsageError(f"{entry.label}: no target: its {FLAGS_FILE} has no --target; pass --target")
    spec: dict[str, Any] = {
        "model": {"format": "hlo", "path": str(entry.hlo_path)},
        "target": chosen,
        "compiler": {"name": "neuronx-cc", "version": entry.compiler_version, "flags": list(entry.flags)},
    }
    if runtime_version:
        spec["runtime"] = {"name": NEURON_RUNTIME, "version": runtime_version}
    if namespace:
        spec["namespace"] = namespace
    return spec


# --- restoring entries ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RestoreTarget:
    """Where one artifact goes in a cache folder, from its annotations."""

    compiler_dir: str
    module: str
    flags_text: str
    hlo_file: str

    @property
    def label(self) -> str:
        return f"{self.compiler_dir}/{self.module}"


def restore_target(annotations: dict[str, Any], what: str) -> RestoreTarget:
    """An artifact's place in the cache, or a UsageError naming it (`what`) and what is missing."""
    missing = [a for a in REQUIRED_ANNOTATIONS if not isinstance(annotations.get(a), str)]
    if missing:
        raise UsageError(
            f"{what} has no {', '.join(missing)} annotation: it was not compiled or pushed from a "
            f"libneuronxla cache (neffcache compile/push --from-neuron-cache), so it has no place in one; "
            f"pull it with --dest instead"
        )
    compiler_dir, module = annotations[ANNOTATION_COMPILER_DIR], annotations[ANNOTATION_MODULE]
    if not compiler_version_of(compiler_dir):
        raise UsageError(
            f"{what}: annotation {ANNOTATION_COMPILER_DIR}={compiler_dir!r} is not a neuronxcc-<version> name"
        )
    if not is_module_name(module):
        raise UsageError(f"{what}: annotation {ANNOTATION_MODULE}={module!r} is not a MODULE_ folder name")
    hlo_file = annotations.get(ANNOTATION_HLO_FILE)
    if hlo_file not in HLO_FILES:
        hlo_file = HLO_FILE
    return RestoreTarget(compiler_dir, module, annotations[ANNOTATION_FLAGS], hlo_file)

