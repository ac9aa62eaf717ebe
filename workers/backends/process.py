"""Running a compiler: the one process runner every backend uses, how its end is classified, and
what a dead worker left behind.

The compiler runs under a tiny supervisor (`supervisor.py`) in its own session, so in a process
group of its own: a timeout or a cancel kills the whole group with SIGKILL, including anything the
compiler started, and so does a normal exit (a compiler's stray helpers must not outlive the job).
The group also dies with the worker: the supervisor gets a parent-death signal and kills it.

Should all of that fail (the supervisor SIGKILLed along with the worker, so a grandchild has no
one to kill it), each run records its worker and its process group in a marker file in its work dir, and
each worker keeps its scratch dirs in a folder of its own named after it (`claim_scratch`). A worker
starting on the host, and every worker's sweep after that (`reap_dead_scratch`), kills the groups
recorded under the folders of this host's dead workers and removes those folders.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from neffcache.lifecycle import FailureClass
from neffcache.workers.backends.base import CompileOutcome

POLL_INTERVAL_S = 0.2
SUPERVISOR = Path(__file__).with_name("supervisor.py")
# In the run's work dir while the compiler may be running: its worker and its process group.
RUN_MARKER = ".neffcache-run.json"
# A worker's own scratch folder under the work dir: neffcache-worker-<pid>-<start>-<host>.
WORKER_DIR_PREFIX = "neffcache-worker-"
MARKER_DEPTH = 4  # worker folder / job scratch dir / build / marker


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
    marker = Path(cwd) / RUN_MARKER
    with open(log_path, "ab") as log:
        proc = _start_supervised(argv, cwd, env, log)
        try:
            _record_run(marker, proc.pid)
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
            _kill_group(proc.pid, wait_s=GROUP_GONE_WAIT_S)
            if proc.returncode is None:
                proc.wait()
            marker.unlink(missing_ok=True)  # the group is gone: nothing left to reap
    return ProcessResult(
        returncode=proc.returncode,
        timed_out=timed_out,
        cancelled=cancelled,
        seconds=time.monotonic() - started,
        timeout_s=timeout_s,
    )


def _start_supervised(argv: Sequence[str], cwd: Path, env: Mapping[str, str], log: IO[bytes]) -> subprocess.Popen:
    """Start argv under the supervisor, which leads a new session; returns once the program runs.

    The supervisor reports a program it cannot start on a pipe: that is raised here as the
    OSError that starting the program directly would have raised."""
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SUPERVISOR), str(os.getpid()), str(write_end), *argv],
            cwd=str(cwd),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(write_end,),
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as status:
            report = status.read()  # EOF once the program runs (or the supervisor ended)
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
    if report:
        proc.wait()
        _kill_group(proc.pid)
        number, _, message = report.decode(errors="replace").partition("\0")
        raise OSError(int(number) if number.isdigit() else 0, message, argv[0])
    return proc


# How long a killed group may take to be gone before the run is reported over anyway.
GROUP_GONE_WAIT_S = 5.0


def _kill_group(pgid: int, wait_s: float = 0.0) -> None:
    """SIGKILL the process group; with `wait_s`, return once none of it runs (zombies aside) or
    after `wait_s`: SIGKILL takes effect asynchronously, and on a loaded host a member can still
    be running right after killpg returns, so a run must not be reported over (its scratch dir
    removed, the next job started) while part of it may still write."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait_s
    while wait_s and _group_runs(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _group_runs(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (not a zombie), as /proc shows it; False
    where there is no /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _record_run(marker: Path, pgid: int) -> None:
    """Best effort: without the marker only the supervisor ties the group to the worker."""
    try:
        _write_json(marker, {"host": socket.gethostname(), "worker_pid": os.getpid(),
                             "worker_start": _start_time(os.getpid()), "pgid": pgid,
                             "leader_start": _start_time(pgid)})
    except OSError:
        pass


# --- what dead workers left behind ------------------------------------------------------------
def _start_time(pid: int) -> int | None:
    """When a live (not zombie) process started, in clock ticks since boot; None when there is no
    such process. 0 where /proc cannot tell (not Linux) but the process exists."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        if Path("/proc/self/stat").exists():
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    """Whether the process `pid` that started at `start` still runs (not a later one with its pid)."""
    now = _start_time(pid)
    return now is not None and (not start or not now or now == start)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _work_root(work_dir: str | Path | None) -> Path:
    return Path(work_dir) if work_dir else Path(tempfile.gettempdir())


def claim_scratch(work_dir: str | Path | None) -> Path:
    """This worker's own folder under `work_dir` (the system temp dir when None), created; its
    name says which process on which host owns it, so `reap_dead_scratch` knows when it is dead.
    The worker puts its jobs' scratch dirs in it and removes it when it stops (`release_scratch`)."""
    root = _work_root(work_dir)
    root.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = root / f"{WORKER_DIR_PREFIX}{pid}-{_start_time(pid) or 0}-{socket.gethostname()}"
    path.mkdir(exist_ok=True)
    return path


def release_scratch(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Reaped:
    folder: Path  # a dead worker's scratch folder, removed
    killed_groups: tuple[int, ...]  # the process groups recorded in it that were signalled


def reap_dead_scratch(work_dir: str | Path | None) -> list[Reaped]:
    """Remove the scratch folders under `work_dir` of this host's dead workers, after killing the
    process groups their runs recorded (compilers that outlived their worker). Folders of live
    workers and of other hosts (a shared work dir) are left alone.

    A worker is dead when the pid in its folder's name runs no process, or runs one that started
    at another time than the name records (`_alive`: a pid reused by another process does not
    make a dead worker look alive). Safe to call at any time, from several workers at once: a
    live worker's folder (the caller's own included) is never touched."""
    root = _work_root(work_dir)
    host = socket.gethostname()
    reaped = []
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    for folder in entries:
        owner = _owner(folder)
        if owner is None or owner[2] != host or _alive(owner[0], owner[1]) or not folder.is_dir():
            continue
        killed = tuple(pgid for pgid in (_kill_recorded(m) for m in _markers(folder)) if pgid is not None)
        release_scratch(folder)
        reaped.append(Reaped(folder, killed))
    return reaped


def _owner(folder: Path) -> tuple[int, int, str] | None:
    """(pid, start time, host) from a worker folder's name, or None for anything else."""
    if not folder.name.startswith(WORKER_DIR_PREFIX):
        return None
    parts = folder.name[len(WORKER_DIR_PREFIX):].split("-", 2)
    if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return int(parts[0]), int(parts[1]), parts[2]


def _markers(folder: Path) -> Iterator[Path]:
    base = len(folder.parts)
    for here, dirs, files in os.walk(folder):
        if len(Path(here).parts) - base >= MARKER_DEPTH - 1:
            dirs.clear()
        if RUN_MARKER in files:
            yield Path(here) / RUN_MARKER


def _kill_recorded(marker: Path) -> int | None:
    """SIGKILL the process group a run marker records, unless its leader's pid now belongs to
    another process. Returns the group signalled, or None."""
    try:
        data = json.loads(marker.read_text())
        pgid, leader_start = int(data["pgid"]), data.get("leader_start")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pgid <= 1 or data.get("host") != socket.gethostname():
        return None
    now = _start_time(pgid)
    if now is not None and leader_start and now and now != leader_start:
        return None  # the leader's pid was reused: that group is not ours
    # The leader alive and ours, or gone: then its pid (the group id) cannot be reused while any
    # member of the group lives, so whatever is in the group is the compiler's.
    _kill_group(pgid)
    return pgid


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
