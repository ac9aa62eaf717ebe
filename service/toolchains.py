"""Fill in a spec's compiler and runtime versions from the toolchains workers registered.

A spec may leave `compiler.version` / `runtime.version` out only when exactly one registered
toolchain fits; otherwise the caller must say which, and the error lists the candidates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from neffcache.db.models import Worker
from neffcache.errors import ToolchainAmbiguous, ToolchainMismatch, ToolchainUnavailable
from neffcache.lifecycle import heard_since
from neffcache.queue import version_matches
from neffcache.sdk import SdkTable
from neffcache.spec import CompileSpec
from neffcache.toolchain import release_version


@dataclass(frozen=True)
class RegisteredToolchain:
    compiler_name: str
    compiler_version: str
    runtime_name: str
    runtime_version: str
    targets: tuple[str, ...]

    def describe(self) -> dict[str, str]:
        return {
            "compiler": f"{self.compiler_name}=={self.compiler_version}",
            "runtime": f"{self.runtime_name}=={self.runtime_version}",
        }


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
        )
        for w in rows
    }
    return sorted(found, key=lambda t: (t.compiler_name, t.compiler_version, t.runtime_version))


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
        raise ToolchainMismatch(
            f"spec.runtime.version: neuronx-cc {compiler_version} ships in SDK "
            f"{', '.join(sdk.with_compiler(compiler_version))} and runtime {runtime_version} in SDK "
            f"{', '.join(sdk.with_runtime(runtime_version))}; a NEFF from one may not load on the other "
            f"(set allow_toolchain_mismatch to build it anyway)",
            compiler_releases=sdk.with_compiler(compiler_version),
            runtime_releases=sdk.with_runtime(runtime_version),
        )
    return spec.model_copy(
        update={
            "compiler": spec.compiler.model_copy(update={"version": compiler_version}),
            "runtime": spec.runtime.model_copy(update={"version": runtime_version}),
        }
    )
