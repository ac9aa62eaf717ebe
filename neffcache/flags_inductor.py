"""inductor's flag rules: config assignments ``name=value``, canonical and checked; the CPU ISA
level (``cpp.march``) and the CUDA architecture (``cuda.arch``) split off as the manifest's
``isa`` (see neffcache/flags.py). Pure: standard library only, no I/O."""

from __future__ import annotations

import re
from collections.abc import Sequence

from neffcache.errors import InvalidFlags, InvalidSpec
from neffcache.flags_common import FIELD, CanonicalFlags, check_tokens, one_of
from neffcache.toolchain import CPU_ISA_LEVELS, DEFAULT_CPU_ISA, INDUCTOR_TARGETS

# The two assignments split off as the manifest's `isa` (isa_flag gives them back).
CPU_ISA_OPTION = "cpp.march"
CUDA_ARCH_OPTION = "cuda.arch"
_CONFIG_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_CUDA_ARCH = re.compile(r"(?:sm_)?([1-9][0-9]*)")

# Options that only change debug output or how many processes compile, never the package.
# Inductor's own cache key ignores the same ones (torch._inductor.config
# `_cache_config_ignore_prefix`).
_INDUCTOR_DROPPED_PREFIXES = ("trace.",)
_INDUCTOR_DROPPED = frozenset(
    {"compile_threads", "worker_start_method", "verbose_progress", "disable_progress"}
)
# Options the worker sets for every job: where the package goes, that it is a package, and the
# caches (pointed at the job's temp dir so every job really compiles). A spec may not touch them.
_INDUCTOR_WORKER_CONTROLLED = frozenset(
    {
        "aot_inductor.output_path",
        "aot_inductor.package",
        "aot_inductor.package_cpp_only",
        "aot_inductor.precompile_headers",
        "cpp_cache_precompile_headers",
        "fx_graph_cache",
        "fx_graph_remote_cache",
        "autotune_local_cache",
        "autotune_remote_cache",
        "bundled_autotune_remote_cache",
        "force_disable_caches",
        "global_cache_dir",
        "cuda.cutlass_dir",
        "cutlass.cutlass_dir",
    }
)

INDUCTOR_DROPPED_OPTIONS: tuple[str, ...] = (
    *(prefix + "*" for prefix in _INDUCTOR_DROPPED_PREFIXES),
    *sorted(_INDUCTOR_DROPPED),
)
INDUCTOR_WORKER_CONTROLLED_OPTIONS: tuple[str, ...] = tuple(sorted(_INDUCTOR_WORKER_CONTROLLED))


def _inductor_value(value: str) -> str:
    # Only the two boolean words are normalised. "1"/"0" are left alone: for an integer option
    # "1" is a number, and we cannot tell from here which options are booleans.
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered.capitalize()
    return value


def canonical_inductor(flags: Sequence[str], target: str) -> CanonicalFlags:
    check_tokens(flags)
    if target not in INDUCTOR_TARGETS:
        raise InvalidSpec(
            f"target: inductor compiles for {one_of(INDUCTOR_TARGETS)}, not {target!r}"
        )

    chosen: dict[str, str] = {}
    for token in flags:
        name, sep, value = token.partition("=")
        name, value = name.strip(), value.strip()
        if not sep:
            raise InvalidFlags(
                f"{FIELD}: {token!r}: must be name=value (an inductor config assignment)"
            )
        if not _CONFIG_NAME.fullmatch(name):
            raise InvalidFlags(f"{FIELD}: {token!r}: {name!r} is not an inductor config name")
        if value == "":
            raise InvalidFlags(f"{FIELD}: {name}: needs a value")
        if name in _INDUCTOR_WORKER_CONTROLLED:
            raise InvalidFlags(f"{FIELD}: {name}: set by the worker for every job, not by a spec")
        if name in _INDUCTOR_DROPPED or name.startswith(_INDUCTOR_DROPPED_PREFIXES):
            continue
        value = _inductor_value(value)
        if name in chosen and chosen[name] != value:
            raise InvalidFlags(
                f"{FIELD}: {name} given twice with different values "
                f"({name}={chosen[name]} and {name}={value})"
            )
        chosen[name] = value

    march = chosen.pop(CPU_ISA_OPTION, None)
    cuda_arch = chosen.pop(CUDA_ARCH_OPTION, None)
    if target == "cpu":
        if cuda_arch is not None:
            raise InvalidFlags(f"{FIELD}: cuda.arch={cuda_arch}: only for target cuda")
        isa = DEFAULT_CPU_ISA if march is None else _cpu_isa(march)
    else:
        if march is not None:
            # One isa per key: for cuda it is the GPU architecture. The host-side wrapper is
            # built by the worker at a fixed, portable level, so it needs no field of its own.
            raise InvalidFlags(
                f"{FIELD}: cpp.march={march}: only for target cpu (for cuda, set cuda.arch)"
            )
        if cuda_arch is None:
            raise InvalidFlags(
                f"{FIELD}: cuda.arch is required for target cuda (e.g. cuda.arch=sm_90): "
                "the GPU architecture decides the output"
            )
        isa = _cuda_isa(cuda_arch)
    return CanonicalFlags(isa, [f"{name}={chosen[name]}" for name in sorted(chosen)])


def isa_flag(target: str, isa: str) -> str:
    """The flag canonical_inductor turns into `isa` for `target`: `cpp.march=<level>` (cpu) or
    `cuda.arch=<arch>` (cuda), so that a manifest's isa can be given back as a spec's flag."""
    if target not in INDUCTOR_TARGETS:
        raise InvalidSpec(f"target: inductor compiles for {one_of(INDUCTOR_TARGETS)}, not {target!r}")
    return f"{CUDA_ARCH_OPTION if target == 'cuda' else CPU_ISA_OPTION}={isa}"


def _cpu_isa(march: str) -> str:
    if march == "native":
        raise InvalidFlags(
            f"{FIELD}: cpp.march=native: not portable (the package would only run on CPUs "
            f"like the compile host); use one of {one_of(CPU_ISA_LEVELS)}"
        )
    if march not in CPU_ISA_LEVELS:
        raise InvalidFlags(f"{FIELD}: cpp.march={march}: must be one of {one_of(CPU_ISA_LEVELS)}")
    return march


def _cuda_isa(arch: str) -> str:
    # Inductor's own config spells it "90"; the key spells it "sm_90". Both mean the same GPU.
    match = _CUDA_ARCH.fullmatch(arch)
    if match is None:
        raise InvalidFlags(f"{FIELD}: cuda.arch={arch}: must be sm_<digits>, e.g. sm_90")
    return f"sm_{match.group(1)}"
