"""An object store outage, on the running stack: the attempt it breaks fails as
`storage_unavailable` and is retried after a backoff that outlasts the outage (one attempt
spent, not all of them), the worker shows `degraded` in /v1/workers and claims nothing until
storage answers again, then runs everything.

Only this module's worker loses its storage (the service and the session's workers keep theirs):
- on S3 (SeaweedFS) it reaches the same bucket through a TCP proxy that this test cuts, as a
  network partition would;
- on the folder store its object folder is a symlink to the session's, atomically replaced by a
  plain file for the outage, as an unmounted volume would be.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest

from tests.support.api import hlo_model, neuron_spec, upload, wait_job
from tests.support.in_process import forget_workers
from tests.support.tcp_proxy import TcpProxy

# A toolchain only this module's worker has (SDK 2.29.1).
VERSION = "2.24.8799.0+5ca1ab1e"
RUNTIME = "2.31.24.0"
STORAGE_BACKOFF_S = 20.0  # the outage below lasts less


@pytest.fixture
def outage(stack_settings: dict[str, Any], storage_kind: str, tmp_path: Path
           ) -> Iterator[tuple[dict[str, Any], Callable[[bool], None]]]:
    """(the storage settings of a worker whose storage this test can take away, down(bool))."""
    if storage_kind == "s3":
        endpoint = urlparse(stack_settings["s3_endpoint_url"])
        proxy = TcpProxy((endpoint.hostname or "127.0.0.1", endpoint.port or 80))
        try:
            yield {"s3_endpoint_url": f"http://127.0.0.1:{proxy.port}"}, proxy.set_cut
        finally:
            proxy.close()
        return
    objects = Path(urlparse(stack_settings["storage_url"]).path)
    mount = tmp_path / "objects"
    mount.symlink_to(objects)

    def down(gone: bool) -> None:
        swap = tmp_path / "swap"
        if gone:
            swap.write_text("the volume is not mounted\n")
        else:
            swap.symlink_to(objects)
        os.replace(swap, mount)  # atomic: the worker never sees the path missing

    yield {"storage_url": f"file://{mount}"}, down


def worker_state(api: httpx.Client, pid: int) -> str:
    return {w["pid"]: w["state"] for w in api.get("/v1/workers").json()["workers"]}[pid]


def wait_for(what: Callable[[], bool], timeout_s: float, describe: Callable[[], Any]) -> None:
    deadline = time.monotonic() + timeout_s
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s: {describe()}")
        time.sleep(0.2)


def test_a_storage_outage_spends_one_attempt_and_the_worker_waits_it_out(
        api: httpx.Client, running: Any, stack_settings: dict[str, Any], outage) -> None:
    storage, down = outage
    worker = running.stack.start_worker(
        "worker-storage-outage",
        {"worker_backend": "neuronx-cc", "compile_timeout_s": 60, "worker_runtime_version": RUNTIME,
         "storage_retry_backoff_s": STORAGE_BACKOFF_S, "storage_retry_backoff_max_s": 2 * STORAGE_BACKOFF_S,
         **storage},
        {"NEURONX_CC_DOUBLE_VERSION": VERSION},
    )

    def spec(*directives: str) -> dict[str, Any]:
        return neuron_spec(upload(api, hlo_model(*directives)),
                           compiler={"name": "neuronx-cc", "version": VERSION, "flags": []},
                           runtime={"name": "neuron-runtime", "version": RUNTIME})

    try:
        assert worker_state(api, worker.pid) == "idle"
        broken = api.post("/v1/compile", json={"spec": spec("double:sleep=3")}).json()["job"]["id"]
        wait_job(api, broken, states=("running",), timeout_s=30)
        down(True)  # mid-compile: its outputs cannot be stored
        outage_began = time.monotonic()
        retried = wait_job(api, broken, states=("queued",), timeout_s=60, failure_class="storage_unavailable")
        assert retried["attempts"] == 1 and f"retrying in {STORAGE_BACKOFF_S:g} s" in retried["message"], retried
        wait_for(lambda: worker_state(api, worker.pid) == "degraded", 30, lambda: api.get("/v1/workers").json())

        # While degraded it claims nothing: a new job waits, its attempts unspent.
        waiting = api.post("/v1/compile", json={"spec": spec()}).json()["job"]["id"]
        time.sleep(3)
        job = api.get(f"/v1/jobs/{waiting}").json()
        assert (job["state"], job["attempts"]) == ("queued", 0), job
        assert worker_state(api, worker.pid) == "degraded"

        # Storage comes back before the retry is due: the worker takes jobs again.
        assert time.monotonic() - outage_began < STORAGE_BACKOFF_S
        down(False)
        wait_for(lambda: worker_state(api, worker.pid) in ("idle", "busy"), 30,
                 lambda: api.get("/v1/workers").json())
        done = wait_job(api, waiting, timeout_s=60)
        assert (done["state"], done["attempts"]) == ("succeeded", 1), done
        done = wait_job(api, broken, timeout_s=60)
        assert (done["state"], done["attempts"], done["failure_class"]) == ("succeeded", 2, None), done
    finally:
        down(False)
        worker.stop()
        forget_workers(stack_settings["database_url"], worker.pid)
