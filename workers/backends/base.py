"""What every compiler backend offers the worker: detect the toolchain, compile one manifest.

A backend runs the real compiler in a child process (see `process.py`), inside a work dir that
the caller creates and deletes; nothing it does may outlive the job or write outside that dir.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neffcache.lifecycle import FailureClass


class BackendUnavailable(RuntimeError):
    """The compiler (or what it is paired with) is missing or unusable on this host."""


@dataclass(frozen=True)
class Toolchain:
    compiler_name: str
    # The full version as the compiler reports it: "2.27.5334.0+2d6a2ba2b", or torch "2.13.0+cpu".
    compiler_version: str
    runtime_name: str
    runtime_version: str
    targets: tuple[str, ...]  # targets this host can compile for
    # cpu: the x86-64 levels this host builds for; cuda: "sm_<major><minor>" of its GPU.
    isas: tuple[str, ...] = ()
    # Other packages whose versions the compiler's output depends on, by package name (torch-neuronx:
    # torch and neuronx-cc). Empty for a compiler that is all of its own toolchain.
    packages: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "compiler_name": self.compiler_name,
            "compiler_version": self.compiler_version,
            "runtime_name": self.runtime_name,
            "runtime_version": self.runtime_version,
            "targets": list(self.targets),
            "isas": list(self.isas),
        }
        if self.packages:  # only where there are any: the others' records are as they were
            data["packages"] = dict(self.packages)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Toolchain:
        return cls(
            compiler_name=str(data["compiler_name"]),
            compiler_version=str(data["compiler_version"]),
            runtime_name=str(data["runtime_name"]),
            runtime_version=str(data["runtime_version"]),
            targets=tuple(data.get("targets", ())),
            isas=tuple(data.get("isas", ())),
            packages={str(k): str(v) for k, v in (data.get("packages") or {}).items()},
        )


@dataclass
class CompileOutcome:
    ok: bool
    # None when ok; else how it failed: compile_error, invalid_input, timeout, oom or cancelled
    # (the lifecycle decides what the job does then: remember, retry, or end cancelled).
    failure_class: FailureClass | None
    # One readable line: "neuronx-cc exited with 70: ERROR 70: ...", "timed out after 3.0 s".
    message: str
    # Output file name -> path, only when ok: neuronx-cc {"model.neff"}, inductor {"model.pt2"},
    # torch-neuronx {"model.pt", one "<name>.neff" per NEFF}.
    files: dict[str, Path] = field(default_factory=dict)
    # The captured compiler log (stdout+stderr); always exists, possibly empty.
    log_path: Path = Path()
    seconds: float = 0.0


class Backend(ABC):
    name: str

    @abstractmethod
    def detect(self) -> Toolchain:
        """What this host runs. Raises BackendUnavailable (a RuntimeError) with a fix to try."""

    @abstractmethod
    def compile(
        self,
        manifest: dict[str, Any],
        model_path: Path,
        work_dir: Path,
        timeout_s: float,
        should_cancel: Callable[[], bool],
    ) -> CompileOutcome:
        """Compile `model_path` as `manifest` says, inside `work_dir` (which the caller deletes).

        Never raises for a failed compile: the outcome says what happened. `should_cancel` is
        polled a few times a second; when it returns true the compiler is killed.
        """


LOG_FILE = "compile.log"


def prepare_work_dir(work_dir: Path) -> tuple[Path, Path]:
    """The absolute work dir (created) and its compiler log file (created empty)."""
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / LOG_FILE
    log_path.touch()
    return work_dir, log_path


def failed_before_start(log_path: Path, message: str) -> CompileOutcome:
    """A compile_error found before the compiler ran (the manifest asks for something impossible).

    The message is written to the log too, so the log is never missing or silent about it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"neffcache: {message}\n")
    return CompileOutcome(
        ok=False, failure_class=FailureClass.COMPILE_ERROR, message=message, files={}, log_path=log_path
    )

