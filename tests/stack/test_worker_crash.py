"""A worker killed with `kill -9` mid-compile: its compiler (and what that started) dies with it,
and the next worker to start on the host removes the dead one's scratch folder; so does the sweep
of a worker that runs on the host already."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.api import hlo_model, neuron_spec, upload, wait_job
from tests.support.in_process import forget_workers

# A toolchain only this test's workers have: neuronx-cc and runtime of Neuron SDK 2.3.0.
VERSION = "2.1.0.76+0f1e2d3c4"
RUNTIME = "2.9.64.0"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_for(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return bool(condition())


def test_a_killed_workers_compiler_dies_and_the_next_worker_removes_its_scratch(
        api: httpx.Client, running, stack_settings: dict[str, Any], tmp_path: Path) -> None:
    work = tmp_path / "work"
    overrides = {"worker_backend": "neuronx-cc", "compile_timeout_s": 60, "worker_runtime_version": RUNTIME,
                 "work_dir": str(work)}
    extra = {"NEURONX_CC_DOUBLE_VERSION": VERSION}
    doomed = running.stack.start_worker("worker-crashing", overrides, extra)
    replacement = None
    try:
        [folder] = work.glob("neffcache-worker-*")
        assert folder.name.startswith(f"neffcache-worker-{doomed.pid}-")
        spec = neuron_spec(upload(api, hlo_model("double:hang")),
                           compiler={"name": "neuronx-cc", "version": VERSION, "flags": []},
                           runtime={"name": "neuron-runtime", "version": RUNTIME})
        job_id = api.post("/v1/compile", json={"spec": spec}).json()["job"]["id"]
        wait_job(api, job_id, states=("running",), timeout_s=30)

        def compile_log() -> str:
            return "".join(p.read_text() for p in folder.glob("neffcache-*/build/compile.log"))

        assert wait_for(lambda: "helper pid " in compile_log(), 30), "the compiler did not start"
        log = compile_log()
        compiler = int(log.split(" pid ", 1)[1].split()[0])
        helper = int(log.split("helper pid ", 1)[1].split(";")[0])
        assert alive(compiler) and alive(helper)

        doomed.kill()  # SIGKILL of the worker's process group
        assert wait_for(lambda: not alive(compiler) and not alive(helper), 5), "the compile outlived its worker"
        assert folder.is_dir()

        replacement = running.stack.start_worker("worker-after-crash", {**overrides, "compile_timeout_s": 2}, extra)
        assert not folder.exists(), "the dead worker's scratch folder is still there"
        assert f"removed {folder}, left by a dead worker" in replacement.log_tail(20000)
        [left] = [p.name for p in work.iterdir()]
        assert left.startswith(f"neffcache-worker-{replacement.pid}-")  # the replacement's own
        api.post(f"/v1/jobs/{job_id}/cancel")
        wait_job(api, job_id, timeout_s=60)
    finally:
        doomed.kill()
        if replacement is not None:
            replacement.stop()
        started = [doomed] + ([replacement] if replacement is not None else [])
        forget_workers(stack_settings["database_url"], *(w.pid for w in started))
    assert not any(work.iterdir()), "a worker that stopped left its scratch folder"


def test_a_running_workers_sweep_removes_a_dead_workers_scratch(
        running, stack_settings: dict[str, Any], tmp_path: Path) -> None:
    work = tmp_path / "work"
    overrides = {"worker_backend": "neuronx-cc", "worker_runtime_version": RUNTIME, "work_dir": str(work)}
    extra = {"NEURONX_CC_DOUBLE_VERSION": VERSION}
    survivor = running.stack.start_worker("worker-sweeping", overrides, extra)
    doomed = None
    try:
        doomed = running.stack.start_worker("worker-dying", overrides, extra)
        [own] = work.glob(f"neffcache-worker-{survivor.pid}-*")
        [folder] = work.glob(f"neffcache-worker-{doomed.pid}-*")
        doomed.kill()  # SIGKILL of the worker's process group: nothing of it is left to clean up
        # No worker starts: the survivor's sweep (every heartbeat) removes it.
        assert wait_for(lambda: not folder.exists(), 20), "the dead worker's scratch folder is still there"
        # Logged once the folder is gone (the removal comes first): wait for the line too.
        assert wait_for(lambda: f"removed {folder}, left by a dead worker" in survivor.log_tail(20000), 10), \
            survivor.log_tail(4000)
        assert own.is_dir() and survivor.alive()
    finally:
        if doomed is not None:
            doomed.kill()
        survivor.stop()
        forget_workers(stack_settings["database_url"], *(w.pid for w in (survivor, doomed) if w is not None))
    assert not any(work.iterdir()), "a worker that stopped left its scratch folder"
