"""workers/backends/process.py with real processes: a compiler (and what it forks) dies with its
worker, and a worker starting on the host removes what dead workers left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from neffcache.workers.backends.process import (
    RUN_MARKER,
    claim_scratch,
    reap_dead_scratch,
    release_scratch,
    run_process,
)
from tests.support.stack import REPO

# A worker in miniature: claims its scratch folder as neffcache-worker does, then runs a
# "compiler" in a job's build dir with run_process, and never returns on its own.
WORKER = """
import os, sys
from pathlib import Path
from neffcache.workers.backends.process import claim_scratch, run_process
root, compiler, pids = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
build = claim_scratch(root) / "neffcache-job-1" / "build"
build.mkdir(parents=True)
run_process([sys.executable, "-c", compiler, pids], cwd=build, env=dict(os.environ),
            log_path=build / "compile.log", timeout_s=600)
"""
# A compiler that forks a helper (as neuronx-cc and inductor's C++ builds do), says who they
# are, and sleeps.
COMPILER = """
import json, os, sys, time
helper = os.fork()
if helper == 0:
    time.sleep(3600)
    os._exit(0)
with open(sys.argv[1] + ".tmp", "w") as f:
    json.dump({"compiler": os.getpid(), "helper": helper}, f)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(3600)
"""


def alive(pid: int) -> bool:
    """A running process (a zombie waiting for its parent counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def live_pids_in_group(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                found.append(int(entry))
    return found


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Worker:
    """The miniature worker, started in its own process group (as a host runs neffcache-worker).
    Several may share one root: each has its own folder there, named after its pid."""

    def __init__(self, root: Path) -> None:
        self.root = root
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        pids_file = root / f"pids-{os.urandom(4).hex()}.json"
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(root), COMPILER, str(pids_file)], env=env,
                                     start_new_session=True, stdout=subprocess.DEVNULL)
        assert wait_for(lambda: pids_file.exists(), 30), "the compiler did not start"
        pids = json.loads(pids_file.read_text())
        self.compiler, self.helper = pids["compiler"], pids["helper"]
        [self.folder] = root.glob(f"neffcache-worker-{self.proc.pid}-*")
        marker = self.folder / "neffcache-job-1" / "build" / RUN_MARKER
        self.pgid = json.loads(marker.read_text())["pgid"]  # the supervisor's group

    def all_pids(self) -> list[int]:
        return [self.pgid, self.compiler, self.helper]

    def kill(self) -> None:
        """What `kill -9 -<pgid>` of the worker does: the worker's group, not the compiler's."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def cleanup(self) -> None:
        for pid in self.all_pids():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    started = Worker(tmp_path)
    try:
        yield started
    finally:
        started.cleanup()


def test_the_compiler_and_its_helper_die_with_their_worker(worker: Worker) -> None:
    # The compiler and its helper run in a process group of their own (not the worker's).
    assert os.getpgid(worker.compiler) == os.getpgid(worker.helper) == worker.pgid != worker.proc.pid
    assert all(alive(pid) for pid in worker.all_pids())
    worker.kill()
    assert wait_for(lambda: not any(alive(pid) for pid in worker.all_pids()), 5), \
        [pid for pid in worker.all_pids() if alive(pid)]
    assert live_pids_in_group(worker.pgid) == []

    # The next worker to start on the host removes the dead one's scratch folder.
    assert worker.folder.is_dir()
    reaped = reap_dead_scratch(worker.root)
    assert [r.folder for r in reaped] == [worker.folder]
    assert not worker.folder.exists()


def test_startup_kills_a_helper_that_outlived_its_worker_and_supervisor(worker: Worker) -> None:
    # Both the supervisor and the worker SIGKILLed: the compiler still gets its parent-death
    # signal, but its helper (no such signal survives a fork) lives on in the group.
    os.kill(worker.pgid, signal.SIGKILL)
    worker.kill()
    assert wait_for(lambda: not alive(worker.compiler), 5)
    time.sleep(0.3)
    assert alive(worker.helper)

    reaped = reap_dead_scratch(worker.root)
    assert [(r.folder, r.killed_groups) for r in reaped] == [(worker.folder, (worker.pgid,))]
    assert wait_for(lambda: not alive(worker.helper), 5)
    assert not worker.folder.exists()


def test_reaping_leaves_live_workers_other_hosts_and_reused_pids_alone(tmp_path: Path) -> None:
    mine = claim_scratch(tmp_path)  # this process: alive
    (mine / "neffcache-job-1").mkdir()
    finished = subprocess.Popen(["true"])
    finished.wait()
    elsewhere = tmp_path / f"neffcache-worker-{finished.pid}-1-not-{socket.gethostname()}"
    elsewhere.mkdir()
    unrelated = tmp_path / "neffcache-1234abcd-xyz"  # not a worker's folder
    unrelated.mkdir()
    # A dead worker whose marker names a group whose leader's pid now belongs to another process.
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        dead = tmp_path / f"neffcache-worker-{finished.pid}-1-{socket.gethostname()}"
        (dead / "job" / "build").mkdir(parents=True)
        (dead / "job" / "build" / RUN_MARKER).write_text(json.dumps(
            {"host": socket.gethostname(), "worker_pid": finished.pid, "pgid": stranger.pid, "leader_start": 1}))
        reaped = reap_dead_scratch(tmp_path)
        assert [(r.folder, r.killed_groups) for r in reaped] == [(dead, ())]
        assert not dead.exists()
        time.sleep(0.2)
        assert stranger.poll() is None, "a process that only reused a recorded pid was killed"
    finally:
        stranger.kill()
        stranger.wait()
    assert mine.is_dir() and (mine / "neffcache-job-1").is_dir() and elsewhere.is_dir() and unrelated.is_dir()
    release_scratch(mine)
    assert not mine.exists()


def test_a_finished_run_leaves_no_marker_and_no_process(tmp_path: Path) -> None:
    script = "import subprocess; subprocess.Popen(['sleep', '3600']); print('compiled')"
    result = run_process([sys.executable, "-c", script], cwd=tmp_path, env=dict(os.environ),
                         log_path=tmp_path / "compile.log", timeout_s=60)
    assert result.returncode == 0 and not result.timed_out
    assert (tmp_path / "compile.log").read_text() == "compiled\n"
    assert not (tmp_path / RUN_MARKER).exists()


def test_the_supervisor_ends_as_the_compiler_did_and_reports_what_cannot_start(tmp_path: Path) -> None:
    def run(*argv: str) -> int:
        return run_process(list(argv), cwd=tmp_path, env={"PATH": os.environ["PATH"]},
                           log_path=tmp_path / "compile.log", timeout_s=60).returncode

    assert run("sh", "-c", "exit 3") == 3
    assert run("sh", "-c", "kill -KILL $$") == -signal.SIGKILL  # what classify calls an OOM
    assert run("sh", "-c", "kill -SEGV $$") == -signal.SIGSEGV
    with pytest.raises(FileNotFoundError, match="no-such-compiler"):
        run("no-such-compiler")
    not_executable = tmp_path / "compiler"
    not_executable.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        run(str(not_executable))
