"""The neuronx-cc backend: HLO in, NEFF out.

    neuronx-cc compile model.hlo.pb --framework XLA --target <t> --output <work>/out/model.neff
                       <canonical flags...>

run with cwd = the job's work dir (the compiler writes its own log file and scratch dirs into
cwd) and TMPDIR inside it, so nothing is left behind once the caller deletes the dir.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from neffcache.lifecycle import FailureClass
from neffcache.settings import Settings
from neffcache.toolchain import (
    NEURON_RUNTIME,
    NEURON_TARGETS,
    RUNTIME_DPKG_QUERY,
    RUNTIME_PACKAGE,
    debian_upstream_version,
)
from neffcache.workers.backends.base import (
    Backend,
    BackendUnavailable,
    CompileOutcome,
    Toolchain,
    failed_before_start,
    prepare_work_dir,
)
from neffcache.workers.backends.process import classify, run_process

MODEL_FILE = "model.hlo.pb"
OUTPUT_FILE = "model.neff"

_VERSION_LINE = re.compile(r"^\s*NeuronX Compiler version\s+(\S+)\s*$")


def parse_compiler_version(output: str) -> str:
    """The version from `neuronx-cc --version` output ("NeuronX Compiler version 2.27.5334.0+...").

    The first line is expected to carry it; lines before it (a warning some installs print) are
    skipped. Raises BackendUnavailable when no line has the form.
    """
    for line in output.splitlines():
        match = _VERSION_LINE.match(line)
        if match and match.group(1)[:1].isdigit():
            return match.group(1)
    excerpt = " | ".join(line.strip() for line in output.strip().splitlines()[:3]) or "(nothing)"
    raise BackendUnavailable(
        "cannot read the compiler version from `neuronx-cc --version`: expected a line "
        f"'NeuronX Compiler version <version>', got: {excerpt[:300]}"
    )


class NeuronxCcBackend(Backend):
    name = "neuronx-cc"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    # --- detect ------------------------------------------------------------------------------
    def executable(self) -> str:
        configured = self.settings.neuronx_cc_path
        found = shutil.which(configured)
        if found is None:
            where = "is not on PATH" if os.sep not in configured else "does not exist or is not executable"
            raise BackendUnavailable(
                f"neuronx-cc not found: {configured!r} {where}. Install the Neuron compiler "
                "(pip package neuronx-cc from the Neuron repository) or set "
                "NEFFCACHE_NEURONX_CC_PATH to its full path."
            )
        return found

    def detect(self) -> Toolchain:
        exe = self.executable()
        try:
            proc = subprocess.run(
                [exe, "--version"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=120,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendUnavailable(f"`{exe} --version` failed: {exc}") from exc
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise BackendUnavailable(
                f"`{exe} --version` exited with {proc.returncode}: {tail[0][:300]}"
            )
        version = parse_compiler_version(proc.stdout + "\n" + proc.stderr)
        return Toolchain(
            compiler_name="neuronx-cc",
            compiler_version=version,
            runtime_name=NEURON_RUNTIME,
            runtime_version=self.runtime_version(),
            targets=NEURON_TARGETS,
            isas=(),
        )

    def runtime_version(self) -> str:
        if self.settings.worker_runtime_version:
            return self.settings.worker_runtime_version.strip()
        fix = (
            "set NEFFCACHE_WORKER_RUNTIME_VERSION to the Neuron runtime version this host's "
            f"NEFFs are for (e.g. 2.34.10.0), or install {RUNTIME_PACKAGE}"
        )
        try:
            proc = subprocess.run(
                list(RUNTIME_DPKG_QUERY),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BackendUnavailable(
                f"cannot ask dpkg for the Neuron runtime version ({exc}): {fix}"
            ) from exc
        version = debian_upstream_version(proc.stdout) if proc.returncode == 0 else ""
        if not version:
            raise BackendUnavailable(f"the Neuron runtime ({RUNTIME_PACKAGE}) is not installed: {fix}")
        return version

    # --- compile -----------------------------------------------------------------------------
    def build_argv(self, exe: str, manifest: dict[str, Any], output: Path) -> list[str]:
        flags = [str(flag) for flag in manifest["compiler"].get("flags", [])]
        return [
            exe,
            "compile",
            MODEL_FILE,
            "--framework",
            "XLA",
            "--target",
            manifest["target"],
            "--output",
            str(output),
            *flags,
        ]

    def compile(
        self,
        manifest: dict[str, Any],
        model_path: Path,
        work_dir: Path,
        timeout_s: float,
        should_cancel: Callable[[], bool],
    ) -> CompileOutcome:
        work_dir, log_path = prepare_work_dir(work_dir)
        target = manifest.get("target")
        if target not in NEURON_TARGETS:
            return failed_before_start(
                log_path,
                f"neuronx-cc cannot compile for target {target!r} "
                f"(knows {', '.join(NEURON_TARGETS)})",
            )
        fmt = manifest.get("model", {}).get("format")
        if fmt != "hlo":
            return failed_before_start(
                log_path, f"neuronx-cc compiles model format 'hlo', not {fmt!r}"
            )
        try:
            exe = self.executable()
        except BackendUnavailable as exc:
            return failed_before_start(log_path, str(exc))

        _place_input(Path(model_path), work_dir / MODEL_FILE)
        output = work_dir / "out" / OUTPUT_FILE
        output.parent.mkdir(exist_ok=True)
        tmp = work_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ)
        env.update({"TMPDIR": str(tmp), "TMP": str(tmp), "TEMP": str(tmp)})

        argv = self.build_argv(exe, manifest, output)
        try:
            result = run_process(
                argv,
                cwd=work_dir,
                env=env,
                log_path=log_path,
                timeout_s=timeout_s,
                should_cancel=should_cancel,
            )
        except OSError as exc:
            return failed_before_start(log_path, f"cannot start neuronx-cc: {exc}")
        outcome = classify(result, "neuronx-cc", log_path, {OUTPUT_FILE: output})
        if outcome.ok and not (output.is_file() and output.stat().st_size > 0):
            outcome.ok = False
            outcome.failure_class = FailureClass.COMPILE_ERROR
            outcome.message = f"neuronx-cc exited with 0 but no output written ({output.name})"
            outcome.files = {}
        return outcome


def _place_input(source: Path, dest: Path) -> None:
    """Copy the model into the work dir. Not a hard link: a compiler that wrote to its input
    would then corrupt the caller's content-addressed copy."""
    shutil.copyfile(source, dest)
