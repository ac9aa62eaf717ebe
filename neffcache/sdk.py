"""Which neuronx-cc and Neuron runtime versions AWS ships together, per SDK release.

A NEFF built by one compiler release can fail to load on the runtime of another SDK release,
so the service refuses compiler/runtime pairs that never shipped together, and fills in the
compiler of a runtime's own release. The table is data kept in the repository
(`neffcache/data/sdk_releases.json`), extracted from AWS's machine-readable release manifest
(`src/helperscripts/n2-manifest.json` in the public aws-neuron-sdk repository). Refresh it:

    python -m neffcache.sdk refresh path/to/n2-manifest.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neffcache.toolchain import (
    COMPILER_PACKAGE,
    RUNTIME_PACKAGE,
    TORCH_NEURONX_PACKAGE,
    release_version,
    version_key,
)

DATA_PATH = Path(__file__).parent / "data" / "sdk_releases.json"
KEPT_PACKAGES = (
    COMPILER_PACKAGE, RUNTIME_PACKAGE, "aws-neuronx-collectives", "aws-neuronx-dkms",
    "aws-neuronx-tools", "libneuronxla", "torch-neuronx", "neuronx_distributed",
)


@dataclass(frozen=True)
class SdkRelease:
    sdk: str
    compilers: tuple[str, ...]
    runtimes: tuple[str, ...]
    instances: tuple[str, ...]
    # torch-neuronx (torch_neuronx.trace); none in a release that ships no PyTorch package.
    torch_neuronx: tuple[str, ...] = ()


class SdkTable:
    def __init__(self, releases: Iterable[SdkRelease]) -> None:
        self.releases = sorted(releases, key=lambda r: version_key(r.sdk), reverse=True)
        # The SDK releases (newest first) by compiler and by runtime release: every compile
        # request and lookup asks `paired`, so it is a dictionary read, not a scan of the table.
        self._by_compiler: dict[str, list[str]] = {}
        self._by_runtime: dict[str, list[str]] = {}
        for release in self.releases:
            for version in release.compilers:
                self._by_compiler.setdefault(version, []).append(release.sdk)
            for version in release.runtimes:
                self._by_runtime.setdefault(version, []).append(release.sdk)
        self._by_torch_neuronx: dict[str, list[str]] = {}
        for release in self.releases:
            for version in release.torch_neuronx:
                self._by_torch_neuronx.setdefault(version, []).append(release.sdk)

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> SdkTable:
        return cls(
            SdkRelease(
                sdk=r["sdk"],
                compilers=tuple(r["packages"].get(COMPILER_PACKAGE, ())),
                runtimes=tuple(r["packages"].get(RUNTIME_PACKAGE, ())),
                instances=tuple(r.get("instances", ())),
                torch_neuronx=tuple(r["packages"].get(TORCH_NEURONX_PACKAGE, ())),
            )
            for r in data["releases"]
        )

    @classmethod
    def load(cls, path: Path = DATA_PATH) -> SdkTable:
        return cls.from_data(json.loads(path.read_text()))

    def with_compiler(self, version: str) -> list[str]:
        """SDK releases that ship this neuronx-cc (newest first)."""
        return list(self._by_compiler.get(release_version(version), ()))

    def with_runtime(self, version: str) -> list[str]:
        return list(self._by_runtime.get(release_version(version), ()))

    def with_torch_neuronx(self, version: str) -> list[str]:
        """SDK releases that ship this torch-neuronx (newest first)."""
        return list(self._by_torch_neuronx.get(release_version(version), ()))

    def compilers_for_runtime(self, runtime: str) -> set[str]:
        return {c for r in self.releases if release_version(runtime) in r.runtimes for c in r.compilers}

    def runtimes_for_compiler(self, compiler: str) -> set[str]:
        return {v for r in self.releases if release_version(compiler) in r.compilers for v in r.runtimes}

    def paired(self, compiler: str, runtime: str) -> bool | None:
        """True when some release ships both; False when both are known but never together;
        None when the table does not know one of them (newer than the table, say)."""
        return _shipped_together(self.with_compiler(compiler), self.with_runtime(runtime))

    def torch_neuronx_paired(self, torch_neuronx: str, runtime: str) -> bool | None:
        """`paired` for a torch-neuronx and a runtime."""
        return _shipped_together(self.with_torch_neuronx(torch_neuronx), self.with_runtime(runtime))


def sdk_releases_of(table: SdkTable, compiler_name: str, version: str) -> list[str]:
    """The SDK releases (newest first) that ship this version of a Neuron compiler: neuronx-cc or
    torch-neuronx (each named by its package); none for any other compiler."""
    if compiler_name == COMPILER_PACKAGE:
        return table.with_compiler(version)
    if compiler_name == TORCH_NEURONX_PACKAGE:
        return table.with_torch_neuronx(version)
    return []


def _shipped_together(releases: list[str], others: list[str]) -> bool | None:
    """Whether two packages' releases meet: None when either is in none the table knows."""
    if not releases or not others:
        return None
    return bool(set(releases) & set(others))


def convert_n2_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """AWS's n2-manifest.json -> this repository's table (the packages that matter here)."""
    releases = []
    for entry in manifest["neuron_releases"]:
        packages: dict[str, list[str]] = {}
        instances: set[str] = set()
        for package in entry["packages"]:
            if package["name"] in KEPT_PACKAGES:
                versions = packages.setdefault(package["name"], [])
                if package["version"] not in versions:
                    versions.append(package["version"])
                if package["name"] == COMPILER_PACKAGE:
                    instances.update(package.get("supported_instances", ()))
        if COMPILER_PACKAGE in packages:
            releases.append({"sdk": entry["neuron_version"], "instances": sorted(instances),
                             "packages": {k: sorted(v) for k, v in sorted(packages.items())}})
    releases.sort(key=lambda r: version_key(r["sdk"]), reverse=True)
    return {
        "source": f"aws-neuron/aws-neuron-sdk src/helperscripts/n2-manifest.json "
                  f"(manifest_version {manifest.get('manifest_version')}, dated {manifest.get('manifest_date')})",
        "fields": "for each Neuron SDK release: the versions of the packages that ship together in it",
        "releases": releases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neffcache.sdk", description="The SDK release table.")
    sub = parser.add_subparsers(dest="command", required=True)
    refresh = sub.add_parser("refresh", help="rebuild the table from AWS's n2-manifest.json")
    refresh.add_argument("manifest", type=Path)
    refresh.add_argument("--out", type=Path, default=DATA_PATH)
    sub.add_parser("show", help="print compiler and runtime per release")
    args = parser.parse_args(argv)
    if args.command == "refresh":
        table = convert_n2_manifest(json.loads(args.manifest.read_text()))
        args.out.write_text(json.dumps(table, indent=1) + "\n")
        print(f"wrote {len(table['releases'])} releases to {args.out}")
        return 0
    for r in SdkTable.load().releases:
        print(f"{r.sdk:<8} neuronx-cc {', '.join(r.compilers):<14} runtime {', '.join(r.runtimes):<12} "
              f"torch-neuronx {', '.join(r.torch_neuronx) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
