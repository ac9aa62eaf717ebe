"""The inductor backend (torch AOTInductor): a torch.export program in, an AOTInductor package out.

The compile runs in a child process (workers/backends/inductor_child.py) with an environment that
keeps every file inductor, the C++ compiler, triton and CUDA write inside the job's work dir:

    TORCHINDUCTOR_CACHE_DIR  <work>/inductor-cache   inductor's caches (else /tmp/torchinductor_<user>),
                                                     so every job really compiles
    TRITON_CACHE_DIR         <work>/inductor-cache/triton
    TRITON_HOME              <work>/home             triton's ~/.triton
    TMPDIR, TMP, TEMP        <work>/tmp              tempfile and g++ scratch files
    XDG_CACHE_HOME           <work>/home/.cache      ~/.cache (torch hub, misc. tools)
    CUDA_CACHE_PATH          <work>/home/.nv         the CUDA driver's JIT cache (~/.nv)
    PYTHONDONTWRITEBYTECODE  1                       no __pycache__ written by the child
    ATEN_CPU_CAPABILITY      default|avx2|avx512     (cpu) the vector ISA inductor generates for

and `aot_inductor.precompile_headers=False` (set by the child), which otherwise leaves about
280 MB of precompiled headers per toolchain.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neffcache.key import aten_cpu_capability
from neffcache.lifecycle import FailureClass
from neffcache.settings import Settings
from neffcache.toolchain import CPU_ISA_LEVELS, TORCH_RUNTIME
from neffcache.workers.backends.base import (
    Backend,
    BackendUnavailable,
    CompileOutcome,
    Toolchain,
    failed_before_start,
    prepare_work_dir,
)
from neffcache.workers.backends.inductor_child import EXIT_INVALID_INPUT
from neffcache.workers.backends.process import classify, run_process

# Flags each level adds to the one below (the psABI's levels, as /proc/cpuinfo names them).
_LEVEL_FLAGS = {
    "x86-64-v2": {"sse4_2", "popcnt", "ssse3"},
    "x86-64-v3": {"avx2", "fma", "bmi2", "movbe"},
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}
assert tuple(_LEVEL_FLAGS) == CPU_ISA_LEVELS[1:]
OUTPUT_FILE = "model.pt2"


def x86_levels(cpu_flags: set[str]) -> tuple[str, ...]:
    """The x86-64 levels a CPU with these /proc/cpuinfo flags can run, lowest first."""
    levels = [CPU_ISA_LEVELS[0]]
    needed: set[str] = set()
    for level in CPU_ISA_LEVELS[1:]:
        needed |= _LEVEL_FLAGS[level]
        if not needed <= cpu_flags:
            break
        levels.append(level)
    return tuple(levels)


def host_x86_levels(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    try:
        text = cpuinfo.read_text()
    except OSError:
        return CPU_ISA_LEVELS[:1]
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return x86_levels(set(value.split()))
    return CPU_ISA_LEVELS[:1]


def child_env(work_dir: Path, manifest: dict[str, Any], base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: the worker's, with every cache and scratch dir inside work_dir."""
    env = dict(os.environ if base is None else base)
    home = work_dir / "home"
    cache = work_dir / "inductor-cache"
    tmp = work_dir / "tmp"
    for d in (home, cache, tmp):
        d.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "TORCHINDUCTOR_CACHE_DIR": str(cache),
            "TRITON_CACHE_DIR": str(cache / "triton"),
            "TRITON_HOME": str(home),
            "TMPDIR": str(tmp),
            "TMP": str(tmp),
            "TEMP": str(tmp),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "CUDA_CACHE_PATH": str(home / ".nv"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    # Stray settings in the worker's environment must not change what gets built.
    for name in ("TORCHINDUCTOR_CPP_MARCH",):
        env.pop(name, None)
    if manifest["target"] == "cpu":
        env["ATEN_CPU_CAPABILITY"] = aten_cpu_capability(manifest["isa"])
    else:
        env.pop("ATEN_CPU_CAPABILITY", None)
    return env


class InductorBackend(Backend):
    name = "inductor"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def detect(self) -> Toolchain:
        try:
            version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError as exc:
            raise BackendUnavailable(
                "torch is not installed: the inductor backend needs it (pip install 'neffcache[worker]')"
            ) from exc
        targets = ["cpu"]
        isas = list(host_x86_levels())
        cuda = self.settings.worker_cuda
        if cuda is None or cuda:
            import torch

            available = torch.cuda.is_available()
            if cuda and not available:
                raise BackendUnavailable(
                    "NEFFCACHE_WORKER_CUDA is true but torch sees no CUDA device "
                    f"(torch {version}); unset it or set it to false"
                )
            if available:
                major, minor = torch.cuda.get_device_capability(0)
                targets.append("cuda")
                isas.append(f"sm_{major}{minor}")
        return Toolchain(
            compiler_name="inductor",
            compiler_version=version,
            runtime_name=TORCH_RUNTIME,
            runtime_version=version,
            targets=tuple(targets),
            isas=tuple(isas),
        )

    def compile(
        self,
        manifest: dict[str, Any],
        model_path: Path,
        work_dir: Path,
        timeout_s: float,
        should_cancel: Callable[[], bool],
    ) -> CompileOutcome:
        work_dir, log_path = prepare_work_dir(work_dir)
        target, isa = manifest.get("target"), manifest.get("isa")
        fmt = manifest.get("model", {}).get("format")
        if fmt != "torch-export":
            return failed_before_start(
                log_path, f"inductor compiles model format 'torch-export', not {fmt!r}"
            )
        if target == "cpu":
            if isa not in CPU_ISA_LEVELS:
                return failed_before_start(
                    log_path, f"cpu isa must be one of {', '.join(CPU_ISA_LEVELS)}, not {isa!r}"
                )
        elif target != "cuda":
            return failed_before_start(log_path, f"inductor compiles for cpu or cuda, not {target!r}")

        manifest_path = work_dir / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        output = work_dir / "out" / OUTPUT_FILE
        output.parent.mkdir(exist_ok=True)
        argv = [
            sys.executable,
            "-m",
            "neffcache.workers.backends.inductor_child",
            "--model",
            str(Path(model_path).resolve()),
            "--manifest",
            str(manifest_path),
            "--output",
            str(output),
        ]
        result = run_process(
            argv,
            cwd=work_dir,
            env=child_env(work_dir, manifest),
            log_path=log_path,
            timeout_s=timeout_s,
            should_cancel=should_cancel,
        )
        outcome = classify(result, "inductor", log_path, {OUTPUT_FILE: output})
        if outcome.failure_class == FailureClass.COMPILE_ERROR and result.returncode == EXIT_INVALID_INPUT:
            # The manifest's inputs do not fit the exported program: the same request always
            # fails the same way (remembered), and it is the request that is wrong.
            outcome.failure_class = FailureClass.INVALID_INPUT
        if outcome.ok and not (output.is_file() and output.stat().st_size > 0):
            outcome.ok = False
            outcome.failure_class = FailureClass.COMPILE_ERROR
            outcome.message = f"inductor exited with 0 but no output written ({output.name})"
            outcome.files = {}
        return outcome
