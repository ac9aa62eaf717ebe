"""`make run` from a fresh copy of the repository answers /readyz with 200 within 60 seconds,
and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.stack import REPO, free_port


def _fresh_copy(dest: Path) -> Path:
    """The files a clone would have: tracked and untracked-but-not-ignored ones."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def test_make_run_is_ready_within_60_seconds_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    clone = _fresh_copy(tmp_path / "clone")
    venv = Path(sys.prefix)
    stamp = venv / ".neffcache-installed"
    assert stamp.exists(), "run the suite through `make test`, which installs the venv first"
    # The dependencies are installed already: keep make from reinstalling this copy into the venv.
    old = stamp.stat().st_mtime - 60
    os.utime(clone / "pyproject.toml", (old, old))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
    port = free_port()
    make = subprocess.Popen(["make", "run", f"VENV={venv}", f"PORT={port}"], cwd=clone, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    started = time.monotonic()
    try:
        ready = None
        while time.monotonic() - started < 60 and make.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, "not ready within 60 s"
        assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "storage": "ok"}
        workers: list = []
        while not workers and time.monotonic() - started < 60:  # the worker registers a moment later
            workers = httpx.get(f"http://127.0.0.1:{port}/v1/workers", timeout=5).json()["workers"]
            time.sleep(0.5)
        assert [w["toolchain"]["compiler_name"] for w in workers] == ["inductor"]
        assert (clone / "var" / "neffcache.db").exists() and (clone / "var" / "objects").is_dir()
    finally:
        os.killpg(make.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        output = make.communicate(timeout=60)[0].decode(errors="replace")
    assert "neffcache is running at" in output, output[-3000:]
    # Ctrl-C reaches every process of the group: the runner's own stop signal must not be taken
    # by the service as a second Ctrl-C (a forced exit, a traceback, a shutdown cut short).
    assert "Traceback" not in output, output[-3000:]
    leftover = subprocess.run(["pgrep", "-s", str(make.pid)], capture_output=True, text=True).stdout.split()
    assert leftover == [], f"processes left running: {leftover}"


def test_make_run_on_a_busy_port_says_so_and_how_to_pick_another(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
        env["NEFFCACHE_DATA"] = str(tmp_path / "var")
        ran = subprocess.run(["make", "-s", "run", f"VENV={sys.prefix}", f"PORT={port}"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert ran.returncode != 0
    said = [line for line in ran.stderr.splitlines() if line.startswith("neffcache:")]
    assert said == [f"neffcache: port {port} on 127.0.0.1 is in use by another process; "
                    f"pick a free one: make run PORT={port + 1}"], ran.stderr
    assert "Traceback" not in ran.stderr
    assert not (tmp_path / "var").exists()  # nothing was started or written
