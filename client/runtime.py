"""The local runtime that `pull` checks artifacts against.

Where the version comes from, first found wins:
  1. --runtime-version (repeatable)   "2.34.10.0" for every runtime, or "torch=2.13.0+cpu"
  2. NEFFCACHE_RUNTIME_VERSION        the same syntax, comma-separated
  3. detection:
       neuron-runtime: `neuron-ls --json-output` (the runtime of the processes it lists), then
                       `dpkg-query -W -f=${Version} aws-neuronx-runtime-lib` (Debian revision dropped)
       torch:          the installed torch's version, from its package metadata (torch is not imported)
A runtime whose version cannot be found is reported as unknown, and pull refuses (fail closed).
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from neffcache.errors import UsageError
from neffcache.toolchain import (
    NEURON_RUNTIME,
    RUNTIME_DPKG_QUERY,
    RUNTIME_NAMES,
    RUNTIME_PACKAGE,
    TORCH_RUNTIME,
    debian_upstream_version,
)

_DETECT_TIMEOUT_S = 15


@dataclass(frozen=True)
class LocalRuntime:
    name: str
    version: str | None
    source: str  # where the version came from, or why it is unknown


def parse_overrides(values: list[str], source: str) -> dict[str | None, str]:
    """["2.34.10.0", "torch=2.13.0"] -> {None: "2.34.10.0", "torch": "2.13.0"}."""
    out: dict[str | None, str] = {}
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, version = part.partition("=")
            if not sep:
                name, version = "", name
            name, version = name.strip(), version.strip()
            if name and name not in RUNTIME_NAMES:
                raise UsageError(f"{source}: unknown runtime {name!r} in {part!r} (use {' or '.join(RUNTIME_NAMES)})")
            if not version:
                raise UsageError(f"{source}: {part!r} names no version")
            out[name or None] = version
    return out


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=_DETECT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _runtime_versions_in(doc: Any) -> set[str]:
    """Every value of a key that names a runtime version, anywhere in neuron-ls's JSON."""
    found: set[str] = set()
    if isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(value, str) and "runtime" in key.lower() and "version" in key.lower() and value.strip():
                found.add(value.strip())
            else:
                found |= _runtime_versions_in(value)
    elif isinstance(doc, list):
        for item in doc:
            found |= _runtime_versions_in(item)
    return found


def _from_neuron_ls() -> tuple[str | None, str]:
    for flags in (["--json-output"], ["--output-format", "json"]):  # the second from Neuron 2.34 on
        out = _run(["neuron-ls", *flags])
        if out is None:
            continue
        try:
            versions = _runtime_versions_in(json.loads(out))
        except ValueError:
            continue
        if len(versions) == 1:
            return versions.pop(), f"neuron-ls {' '.join(flags)}"
        if len(versions) > 1:
            return None, f"neuron-ls lists processes on several runtimes ({', '.join(sorted(versions))})"
    return None, "neuron-ls reports no runtime version" if shutil.which("neuron-ls") else "no neuron-ls"


def _from_dpkg() -> tuple[str | None, str]:
    out = _run(list(RUNTIME_DPKG_QUERY))
    version = debian_upstream_version(out) if out else ""
    if version:
        return version, f"dpkg-query {RUNTIME_PACKAGE}"
    if shutil.which("dpkg-query") is None:
        return None, "no dpkg-query"
    return None, f"dpkg-query knows no {RUNTIME_PACKAGE}"


def detect(name: str) -> LocalRuntime:
    if name == TORCH_RUNTIME:
        try:
            return LocalRuntime(name, importlib.metadata.version("torch"), "the installed torch")
        except importlib.metadata.PackageNotFoundError:
            return LocalRuntime(name, None, "torch is not installed")
    if name == NEURON_RUNTIME:
        version, why_ls = _from_neuron_ls()
        if version:
            return LocalRuntime(name, version, why_ls)
        version, why_dpkg = _from_dpkg()
        if version:
            return LocalRuntime(name, version, why_dpkg)
        return LocalRuntime(name, None, f"{why_ls}, {why_dpkg}")
    return LocalRuntime(name, None, f"no way to detect runtime {name!r}")


class RuntimeResolver:
    """Answers "which version of runtime NAME is here?", each name detected at most once."""

    def __init__(self, flags: list[str], env_value: str | None) -> None:
        self.flags = parse_overrides(flags, "--runtime-version")
        self.env = parse_overrides([env_value], "NEFFCACHE_RUNTIME_VERSION") if env_value else {}
        self._cache: dict[str, LocalRuntime] = {}

    def local(self, name: str) -> LocalRuntime:
        if name not in self._cache:
            for given, source in ((self.flags, "--runtime-version"), (self.env, "NEFFCACHE_RUNTIME_VERSION")):
                version = given.get(name) or given.get(None)
                if version:
                    self._cache[name] = LocalRuntime(name, version, source)
                    break
            else:
                self._cache[name] = detect(name)
        return self._cache[name]
