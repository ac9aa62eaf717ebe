"""The torch-neuronx backend: a PyTorch model in (a torch.export program or a TorchScript module),
`torch_neuronx.trace`'s TorchScript module out (`model.pt`, which a serving pod loads with
`torch.jit.load` once `torch_neuronx` is imported), with every NEFF neuronx-cc wrote for it.

The trace runs in a child process (workers/backends/torch_neuronx_child.py) in the job's work dir,
under the same runner as every backend (process.py: timeout, cancel, SIGKILL as out of memory),
with inductor's environment (every cache and scratch dir inside the work dir) and without
NEURON_CC_FLAGS, which torch-neuronx would add to the compiler's arguments behind the key's back.

The toolchain is what is installed: torch and torch-neuronx by their package versions, neuronx-cc
and the Neuron runtime as the neuronx-cc backend finds them (`neuronx-cc --version`, dpkg or
NEFFCACHE_WORKER_RUNTIME_VERSION).
"""

from __future__ import annotations

import importlib.metadata
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neffcache.lifecycle import FailureClass
from neffcache.settings import Settings
from neffcache.toolchain import (
    COMPILER_PACKAGE,
    NEURON_RUNTIME,
    NEURON_TARGETS,
    TORCH_NEURONX_PACKAGE,
    TORCH_PACKAGE,
)
from neffcache.workers.backends.base import (
    Backend,
    BackendUnavailable,
    CompileOutcome,
    Toolchain,
    failed_before_start,
    prepare_work_dir,
)
from neffcache.workers.backends.inductor import child_env
from neffcache.workers.backends.inductor_child import EXIT_INVALID_INPUT
from neffcache.workers.backends.neuronx_cc import NeuronxCcBackend
from neffcache.workers.backends.process import ProcessResult, classify, run_process
from neffcache.workers.backends.torch_neuronx_child import EXIT_COMPILER_KILLED, FORMATS, MODEL_FILE

PROGRAM = "torch-neuronx"
# Environment variables torch-neuronx reads that would change the output without the key knowing.
STRAY_SETTINGS = ("NEURON_CC_FLAGS",)


def installed_version(package: str) -> str:
    """The installed version of a pip package, or BackendUnavailable saying how to get it."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BackendUnavailable(
            f"{package} is not installed: the torch-neuronx backend needs torch, torch-neuronx and "
            "neuronx-cc (pip packages from the Neuron repository, https://pip.repos.neuron.amazonaws.com)"
        ) from exc


class TorchNeuronxBackend(Backend):
    name = PROGRAM

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.neuronx_cc = NeuronxCcBackend(settings)
        self._toolchain: Toolchain | None = None

    def detect(self) -> Toolchain:
        compiler = self.neuronx_cc.detect()
        self._toolchain = Toolchain(
            compiler_name=PROGRAM,
            compiler_version=installed_version(TORCH_NEURONX_PACKAGE),
            runtime_name=NEURON_RUNTIME,
            runtime_version=compiler.runtime_version,
            targets=NEURON_TARGETS,
            isas=(),
            packages={TORCH_PACKAGE: installed_version(TORCH_PACKAGE), COMPILER_PACKAGE: compiler.compiler_version},
        )
        return self._toolchain

    def refusal(self, manifest: dict[str, Any]) -> str | None:
        """Why this host must not build the manifest, or None: the torch and neuronx-cc versions
        in the key must be the ones installed here. The queue's name carries them too
        (neffcache.queue.QUEUED_PACKAGES), so this only catches a job put on a queue by hand."""
        installed = self._toolchain or self.detect()
        compiler = manifest.get("compiler", {})
        for field, package in (("torch_version", TORCH_PACKAGE), ("neuronx_cc_version", COMPILER_PACKAGE)):
            have, want = installed.packages.get(package), compiler.get(field)
            if want not in (have, (have or "").split("+", 1)[0]):
                return f"this worker has {package}=={have}, the job needs {package}=={want}"
        return None

    def compile(
        self,
        manifest: dict[str, Any],
        model_path: Path,
        work_dir: Path,
        timeout_s: float,
        should_cancel: Callable[[], bool],
    ) -> CompileOutcome:
        work_dir, log_path = prepare_work_dir(work_dir)
        impossible = _impossible(manifest)
        if impossible:
            return failed_before_start(log_path, impossible)
        refusal = self.refusal(manifest)
        if refusal:
            # A routing mistake, as the worker's own check calls it: the request cannot be built here.
            outcome = failed_before_start(log_path, refusal)
            outcome.failure_class = FailureClass.INVALID_INPUT
            return outcome
        manifest_path = work_dir / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
        output_dir = work_dir / "out"
        argv = [
            sys.executable, "-m", "neffcache.workers.backends.torch_neuronx_child",
            "--model", str(Path(model_path).resolve()),
            "--manifest", str(manifest_path),
            "--output-dir", str(output_dir),
            "--compiler-workdir", str(work_dir / "neuronx-cc"),
        ]
        env = child_env(work_dir, manifest)
        for name in STRAY_SETTINGS:
            env.pop(name, None)
        result = run_process(argv, cwd=work_dir, env=env, log_path=log_path, timeout_s=timeout_s,
                             should_cancel=should_cancel)
        return outcome_of(result, log_path, output_dir)


def _impossible(manifest: dict[str, Any]) -> str | None:
    target, fmt = manifest.get("target"), manifest.get("model", {}).get("format")
    if target not in NEURON_TARGETS:
        return f"torch-neuronx cannot compile for target {target!r} (knows {', '.join(NEURON_TARGETS)})"
    if fmt not in FORMATS:
        return f"torch-neuronx traces model formats {', '.join(FORMATS)}, not {fmt!r}"
    return None


def outcome_of(result: ProcessResult, log_path: Path, output_dir: Path) -> CompileOutcome:
    """The outcome of the child's run: its files (model.pt and every NEFF) when it succeeded."""
    files = {p.name: p for p in sorted(output_dir.glob("*")) if p.is_file()} if output_dir.is_dir() else {}
    outcome = classify(result, PROGRAM, log_path, files)
    if outcome.failure_class == FailureClass.COMPILE_ERROR and result.returncode == EXIT_INVALID_INPUT:
        # The example inputs do not fit the model: the same request always fails the same way.
        outcome.failure_class = FailureClass.INVALID_INPUT
    elif outcome.failure_class == FailureClass.COMPILE_ERROR and result.returncode == EXIT_COMPILER_KILLED:
        # neuronx-cc, not the child, took the kernel's OOM kill: transient, like any OOM.
        outcome.failure_class = FailureClass.OOM
    if outcome.ok:
        missing = _missing_output(files)
        if missing:
            outcome.ok, outcome.failure_class, outcome.files = False, FailureClass.COMPILE_ERROR, {}
            outcome.message = f"torch-neuronx exited with 0 but {missing}"
    return outcome


def _missing_output(files: dict[str, Path]) -> str | None:
    if MODEL_FILE not in files or files[MODEL_FILE].stat().st_size == 0:
        return f"wrote no {MODEL_FILE}"
    if not any(name.endswith(".neff") for name in files):
        return "left no NEFF"
    return None
