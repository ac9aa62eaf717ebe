"""Fill in a spec's compiler and runtime versions from the toolchains workers registered.

A spec may leave `compiler.version` / `runtime.version` out only when exactly one registered
toolchain fits; otherwise the caller must say which, and the error lists the candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from neffcache.db.models import Worker
from neffcache.errors import ToolchainAmbiguous, ToolchainMismatch, ToolchainUnavailable
from neffcache.lifecycle import heard_since
from neffcache.queue import version_matches
from neffcache.sdk import SdkTable
from neffcache.spec import CompileSpec
from neffcache.toolchain import COMPILER_PACKAGE, TORCH_NEURONX_PACKAGE, TORCH_PACKAGE, release_version


@dataclass(frozen=True)
class RegisteredToolchain:
    compiler_name: str
    compiler_version: str
    runtime_name: str
    runtime_version: str
    targets: tuple[str, ...]
    # (package, version) of the other packages the output depends on (torch-neuronx: torch, neuronx-cc).
    packages: tuple[tuple[str, str], ...] = ()

    def package(self, name: str) -> str:
        return dict(self.packages).get(name, "")

    def describe(self) -> dict[str, str]:
        described = {
            "compiler": f"{self.compiler_name}=={self.compiler_version}",
            "runtime": f"{self.runtime_name}=={self.runtime_version}",
        }
        if self.packages:
            described["packages"] = ", ".join(f"{name}=={version}" for name, version in self.packages)
        return described


def registered_toolchains(session: Session, ttl_s: float) -> list[RegisteredToolchain]:
    # A worker that stopped cleanly was taken out of service; one that went silent may return.
    rows = session.scalars(select(Worker).where(heard_since(ttl_s))).all()
    found = {
        RegisteredToolchain(
            w.compiler_name,
            w.compiler_version,
            w.runtime_name,
            w.runtime_version,
            tuple(w.toolchain.get("targets", ())),
            tuple(sorted((w.toolchain.get("packages") or {}).items())),
        )
        for w in rows
    }
    return sorted(found, key=lambda t: (t.compiler_name, t.compiler_version, t.runtime_version))


def live_queues(session: Session, lost_after_s: float) -> set[str]:
    """Every queue a live worker listens to: heard from within `lost_after_s` and not stopped. A
    job whose queue is not among them waits until a worker with its toolchain starts."""
    return {queue for queues in session.scalars(select(Worker.queues).where(heard_since(lost_after_s)))
            for queue in queues or ()}


def require_live_worker(queues: set[str], queue: str, manifest: dict[str, Any]) -> None:
    """ToolchainUnavailable unless a live worker listens to `queue` (the job of `manifest`'s)."""
    if queue not in queues:
        compiler, runtime = manifest["compiler"], manifest["runtime"]
        with_packages = "".join(f", {name} {compiler[name]}" for name in ("torch_version", "neuronx_cc_version")
                                if name in compiler)
        raise ToolchainUnavailable(
            f"no live worker offers {compiler['name']}=={compiler['version']}{with_packages} for target "
            f"{manifest['target']} ({runtime['name']} {runtime['version']}): start a worker with that toolchain",
            candidates=[],
        )


def _pick(field: str, values: set[str], spec: CompileSpec, candidates: list[RegisteredToolchain],
          why_none: str = "") -> str:
    if len(values) == 1:
        return next(iter(values))
    if not values:
        raise ToolchainUnavailable(
            f"spec.{field}: left out, and "
            f"{why_none or f'no registered worker offers {spec.compiler.name} for target {spec.target}'}"
            f"; name the version explicitly",
            candidates=[],
        )
    raise ToolchainAmbiguous(
        f"spec.{field}: left out, and {len(values)} registered toolchains fit "
        f"({', '.join(sorted(values))}); name one",
        candidates=[c.describe() for c in candidates],
    )


def resolve_spec(toolchains: Callable[[], list[RegisteredToolchain]], spec: CompileSpec,
                 sdk: SdkTable) -> CompileSpec:
    """Return the spec with both versions filled in (unchanged when it names both); `toolchains`
    gives the registered ones, asked only when a version is left out.

    neuronx-cc: a spec naming only the runtime gets the compiler of the runtime's SDK release
    (among those a worker has), and a pair from different SDK releases is refused unless the
    spec sets `allow_toolchain_mismatch` (which the key then records).
    """
    assert spec.runtime is not None  # the schema fills in the runtime name
    if spec.compiler.name == TORCH_NEURONX_PACKAGE:
        return resolve_torch_neuronx(toolchains, spec, sdk)
    compiler_version = spec.compiler.version
    runtime_version = spec.runtime.version
    if spec.compiler.name == "inductor":
        # A package must be loaded by the torch that built it: one version names both.
        compiler_version = compiler_version or runtime_version
        runtime_version = runtime_version or compiler_version
        if compiler_version and runtime_version and compiler_version != runtime_version:
            raise ToolchainMismatch(
                f"spec.runtime.version: inductor packages load only in the torch that built them; "
                f"compiler {compiler_version} and runtime {runtime_version} differ"
            )
    neuron = spec.compiler.name == "neuronx-cc"
    if not (compiler_version and runtime_version):
        candidates = [
            t
            for t in toolchains()
            if t.compiler_name == spec.compiler.name
            and spec.target in t.targets
            and (compiler_version is None or version_matches(compiler_version, t.compiler_version))
        ]
        if compiler_version is None:
            same_release = sdk.compilers_for_runtime(runtime_version) if neuron and runtime_version else set()
            if same_release:
                candidates = [t for t in candidates if release_version(t.compiler_version) in same_release]
            elif runtime_version is not None:
                candidates = [t for t in candidates if t.runtime_version == runtime_version]
            compiler_version = _pick("compiler.version", {t.compiler_version for t in candidates}, spec, candidates)
            candidates = [t for t in candidates if t.compiler_version == compiler_version]
        if runtime_version is None:
            paired = sdk.runtimes_for_compiler(compiler_version) if neuron else set()
            unknown = neuron and not paired and not candidates
            runtime_version = _pick(
                "runtime.version", paired or {t.runtime_version for t in candidates}, spec, candidates,
                why_none=f"neuronx-cc {compiler_version} is in no SDK release this service knows "
                         f"(python -m neffcache.sdk refresh) and no live worker has it" if unknown else "",
            )
    if neuron and not spec.allow_toolchain_mismatch and sdk.paired(compiler_version, runtime_version) is False:
        raise _unpaired(COMPILER_PACKAGE, compiler_version, sdk.with_compiler(compiler_version), runtime_version, sdk)
    return spec.model_copy(
        update={
            "compiler": spec.compiler.model_copy(update={"version": compiler_version}),
            "runtime": spec.runtime.model_copy(update={"version": runtime_version}),
        }
    )


def _unpaired(package: str, version: str, releases: list[str], runtime_version: str,
              sdk: SdkTable) -> ToolchainMismatch:
    """The refusal of a package and a runtime that no SDK release ships together."""
    return ToolchainMismatch(
        f"spec.runtime.version: {package} {version} ships in SDK {', '.join(releases)} and runtime "
        f"{runtime_version} in SDK {', '.join(sdk.with_runtime(runtime_version))}; a NEFF from one may not "
        f"load on the other (set allow_toolchain_mismatch to build it anyway)",
        compiler_releases=releases,
        runtime_releases=sdk.with_runtime(runtime_version),
    )


# torch-neuronx's versions, in the order they are filled in: spec field -> the package a
# registered toolchain names it by ("" for its own compiler version).
_TORCH_NEURONX_VERSIONS = (
    ("compiler.version", ""),
    ("compiler.torch_version", TORCH_PACKAGE),
    ("compiler.neuronx_cc_version", COMPILER_PACKAGE),
)


def _offered(toolchain: RegisteredToolchain, package: str) -> str:
    return toolchain.package(package) if package else toolchain.compiler_version


def _offers(toolchain: RegisteredToolchain, versions: dict[str, str | None]) -> bool:
    """Whether the toolchain has every version named (None: not named)."""
    return all(
        version_matches(wanted, _offered(toolchain, package))
        for field, package in _TORCH_NEURONX_VERSIONS
        if (wanted := versions[field]) is not None
    )


def resolve_torch_neuronx(toolchains: Callable[[], list[RegisteredToolchain]], spec: CompileSpec,
                          sdk: SdkTable) -> CompileSpec:
    """resolve_spec for torch-neuronx: torch-neuronx, torch, neuronx-cc and runtime versions.

    Each left out is taken from the registered torch-neuronx workers for the target that have the
    versions the spec names (for a named runtime, those whose neuronx-cc ships with it); the
    runtime, from the SDK releases that ship the neuronx-cc. Unless the spec sets
    `allow_toolchain_mismatch`, a neuronx-cc or torch-neuronx from another SDK release than the
    runtime, or a torch that is not the one torch-neuronx is built for, is refused."""
    assert spec.runtime is not None
    compiler = spec.compiler
    versions: dict[str, str | None] = {
        "compiler.version": compiler.version, "compiler.torch_version": compiler.torch_version,
        "compiler.neuronx_cc_version": compiler.neuronx_cc_version,
    }
    runtime_version = spec.runtime.version
    if (compiler.version and runtime_version and not spec.allow_toolchain_mismatch
            and sdk.torch_neuronx_paired(compiler.version, runtime_version) is False):
        # Refused as a pair before any worker is asked: no worker could make it a valid one.
        raise _unpaired(TORCH_NEURONX_PACKAGE, compiler.version, sdk.with_torch_neuronx(compiler.version),
                        runtime_version, sdk)
    if not (all(versions.values()) and runtime_version):
        candidates = [t for t in toolchains() if t.compiler_name == TORCH_NEURONX_PACKAGE and spec.target in t.targets
                      and _offers(t, versions)]
        if runtime_version and versions["compiler.neuronx_cc_version"] is None:
            same_release = sdk.compilers_for_runtime(runtime_version)
            candidates = [t for t in candidates if (release_version(t.package(COMPILER_PACKAGE)) in same_release
                                                    if same_release else t.runtime_version == runtime_version)]
        for field, package in _TORCH_NEURONX_VERSIONS:
            if versions[field] is None:
                versions[field] = _pick(field, {_offered(t, package) for t in candidates}, spec, candidates)
            candidates = [t for t in candidates if version_matches(str(versions[field]), _offered(t, package))]
        if runtime_version is None:
            paired = sdk.runtimes_for_compiler(str(versions["compiler.neuronx_cc_version"]))
            runtime_version = _pick("runtime.version", paired or {t.runtime_version for t in candidates},
                                    spec, candidates)
    version, torch_version, cc_version = (str(versions[f]) for f, _ in _TORCH_NEURONX_VERSIONS)
    if not spec.allow_toolchain_mismatch:
        _check_torch_neuronx_pairs(version, torch_version, cc_version, runtime_version, sdk)
    return spec.model_copy(update={
        "compiler": compiler.model_copy(update={
            "version": version, "torch_version": torch_version, "neuronx_cc_version": cc_version}),
        "runtime": spec.runtime.model_copy(update={"version": runtime_version}),
    })


def _check_torch_neuronx_pairs(version: str, torch_version: str, cc_version: str, runtime_version: str,
                               sdk: SdkTable) -> None:
    if sdk.paired(cc_version, runtime_version) is False:
        raise _unpaired(COMPILER_PACKAGE, cc_version, sdk.with_compiler(cc_version), runtime_version, sdk)
    if sdk.torch_neuronx_paired(version, runtime_version) is False:
        raise _unpaired(TORCH_NEURONX_PACKAGE, version, sdk.with_torch_neuronx(version), runtime_version, sdk)
    # torch-neuronx's version starts with the torch release it is built for: 2.9.0.2.15.32035 is torch 2.9.0.
    built_for = ".".join(release_version(version).split(".")[:3])
    if release_version(torch_version) != built_for:
        raise ToolchainMismatch(
            f"spec.compiler.torch_version: torch-neuronx {version} is built for torch {built_for}, not "
            f"{torch_version} (set allow_toolchain_mismatch to build it anyway)"
        )
