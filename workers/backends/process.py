"""Running a compiler: the one process runner every backend uses, and how its end is classified.

The compiler runs in its own session (so its own process group): a timeout or a cancel kills the
whole group with SIGKILL, including anything the compiler started, and so does a normal exit
(a compiler's stray helpers must not outlive the job).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from neffcache.lifecycle import FailureClass
from neffcache.workers.backends.base import CompileOutcome

POLL_INTERVAL_S = 0.2


@dataclass(frozen=True)
class ProcessResult:
    returncode: int  # negative: killed by that signal (as subprocess reports it)
    timed_out: bool
    cancelled: bool
    seconds: float
    timeout_s: float


def run_process(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    log_path: Path,
    timeout_s: float,
    should_cancel: Callable[[], bool] = lambda: False,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> ProcessResult:
    """Run argv in cwd with env; stdout and stderr are appended to log_path.

    Polls every poll_interval_s: past timeout_s, or once should_cancel() returns true, the whole
    process group is killed (SIGKILL) and the result says which. Raises OSError only when the
    program cannot be started at all (missing, not executable).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    timed_out = cancelled = False
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            cwd=str(cwd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    proc.wait(timeout=poll_interval_s)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if time.monotonic() - started >= timeout_s:
                    timed_out = True
                elif should_cancel():
                    cancelled = True
                if timed_out or cancelled:
                    _kill_group(proc.pid)
                    proc.wait()
                    break
        finally:
            # Also on a normal exit (stray children) and when should_cancel raised.
            _kill_group(proc.pid)
            if proc.returncode is None:
                proc.wait()
    return ProcessResult(
        returncode=proc.returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        seconds=time.monotonic() - started,
        timeout_s=timeout_s,
    )


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def classify(
    result: ProcessResult,
    program: str,
    log_path: Path,
    files: dict[str, Path] | None = None,
) -> CompileOutcome:
    """The CompileOutcome for a finished run: exit 0 ok; timeout; cancelled; SIGKILL (-9) from
    outside is an OOM kill (the kernel's OOM killer uses SIGKILL: transient); any other end is a
    compile_error. A failure's message ends with the last line of the log when there is one."""
    rc = result.returncode
    if result.timed_out:
        failure, message = FailureClass.TIMEOUT, f"{program} timed out after {result.timeout_s:.1f} s"
    elif result.cancelled:
        failure, message = FailureClass.CANCELLED, f"{program} cancelled after {result.seconds:.1f} s"
    elif rc == 0:
        return CompileOutcome(
            ok=True,
            failure_class=None,
            message=f"{program} succeeded in {result.seconds:.1f} s",
            files=dict(files or {}),
            log_path=log_path,
            seconds=result.seconds,
        )
    elif rc == -signal.SIGKILL:
        failure = FailureClass.OOM
        message = f"{program} was killed by SIGKILL (most likely out of memory)"
    elif rc < 0:
        failure, message = FailureClass.COMPILE_ERROR, f"{program} was killed by {_signal_name(-rc)}"
    else:
        failure, message = FailureClass.COMPILE_ERROR, f"{program} exited with {rc}"
    last = last_log_line(log_path)
    if last and failure == FailureClass.COMPILE_ERROR:
        message = f"{message}: {last}"
    return CompileOutcome(
        ok=False,
        failure_class=failure,
        message=message,
        files={},
        log_path=log_path,
        seconds=result.seconds,
    )


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def last_log_line(log_path: Path, max_chars: int = 300) -> str:
    """The last non-empty line of the log (read from its tail only), cut to max_chars."""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 8192))
            tail = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    for line in reversed(tail.splitlines()):
        line = line.strip()
        if line:
            return line if len(line) <= max_chars else line[: max_chars - 3] + "..."
    return ""
