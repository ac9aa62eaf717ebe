"""A PyTorch model from a spec to a pod's `torch.jit.load`, through service -> queue -> torch-neuronx
worker (on the torch_neuronx and neuronx-cc test doubles) -> object store -> `neffcache pull`."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from neffcache.key import key_for_spec
from tests.support.api import upload, wait_job
from tests.support.stack import Process
from tests.support.torch_neuronx import (
    DOUBLE_TORCH_NEURONX_VERSION,
    NEURON_RUNTIME,
    NEURONX_CC_VERSION,
    TORCH_NEURONX_DOUBLE,
    TORCH_VERSION,
    TinyModel,
    export_bytes,
    token_ids,
)


@pytest.fixture(scope="module")
def torch_neuronx_worker(running) -> Iterator[Process]:
    """A torch-neuronx worker on the running stack, with the torch_neuronx double on its path."""
    proc = running.stack.start_worker(
        "worker-torch-neuronx",
        {"worker_backend": "torch-neuronx", "compile_timeout_s": 60, "worker_runtime_version": NEURON_RUNTIME},
        {"PYTHONPATH": str(TORCH_NEURONX_DOUBLE), "NEURONX_CC_DOUBLE_PYTHON": sys.executable},
    )
    yield proc
    proc.stop()


def spec(digest: str, **compiler: object) -> dict[str, object]:
    return {"model": {"format": "torch-export", "digest": digest},
            "inputs": [{"name": "input_ids", "shape": [1, 8], "dtype": "int64"}],
            "target": "inf2", "compiler": {"name": "torch-neuronx", **compiler}}


def test_model_to_pod_torch_jit_load(cli, api: httpx.Client, torch_neuronx_worker: Process, tmp_path: Path) -> None:
    model = TinyModel(seed=21)
    program = tmp_path / "model.pt2"
    program.write_bytes(export_bytes(model, token_ids()))
    args = ["compile", str(program), "--compiler", "torch-neuronx", "--target", "inf2",
            "--input", "input_ids=1x8:int64", "--flag=-O2"]
    first = cli(*args, "--wait", "--timeout", "120", "--json")
    assert first.rc == 0, first.stderr + torch_neuronx_worker.log_tail()
    [result] = first.json()["results"]
    assert result["status"] == "succeeded", result
    # Left out of the spec, every version is filled in from the worker, and all are in the key.
    compiler = result["spec"]["compiler"]
    assert (compiler["version"], compiler["torch_version"], compiler["neuronx_cc_version"]) == (
        DOUBLE_TORCH_NEURONX_VERSION, TORCH_VERSION, NEURONX_CC_VERSION)
    assert result["spec"]["runtime"]["version"] == NEURON_RUNTIME
    manifest, key = key_for_spec(result["spec"])
    assert result["key"] == key
    assert manifest["compiler"]["flags"] == ["--optlevel=2"] and manifest["compiler"]["inline_weights_to_neff"] is True

    artifact = api.get(f"/v1/artifacts/{key}").json()
    files = {f["name"]: f for f in artifact["files"]}
    assert set(files) == {"model.pt", "graph.neff", "compile.log"}
    assert files["graph.neff"]["neff"]["neff_build_version"] == NEURONX_CC_VERSION
    assert "neff" not in files["model.pt"]

    # The pod: pull (digest verified, runtime checked), then torch.jit.load gives the eager result.
    dest = tmp_path / "pod"
    pulled = cli("pull", key, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
    assert pulled.rc == 0, pulled.stderr
    loaded = torch.jit.load(str(dest / key / "model.pt"))
    assert torch.equal(loaded(token_ids()), model(token_ids()))
    assert (dest / key / "graph.neff").read_bytes() == loaded.neff.numpy().tobytes()

    # The same request again is a hit: no new job.
    again = cli(*args, "--json")
    assert again.rc == 0 and again.json()["results"][0]["status"] == "hit"
    assert [j["key"] for j in api.get("/v1/jobs?limit=500").json()["jobs"]].count(key) == 1


def test_compiler_error_is_remembered_and_bad_inputs_are_invalid_input(
    api: httpx.Client, torch_neuronx_worker: Process
) -> None:
    failing = spec(upload(api, export_bytes(TinyModel(markers=("double_fail",)), token_ids())))
    first = api.post("/v1/compile", json={"spec": failing})
    assert first.status_code == 202, first.text
    job = wait_job(api, first.json()["job"]["id"], timeout_s=120)
    assert (job["state"], job["failure_class"], job["attempts"]) == ("failed", "compile_error", 1), job
    assert "neuronx-cc failed with 70" in job["message"]
    remembered = api.post("/v1/compile", json={"spec": failing})
    assert remembered.status_code == 200 and remembered.json()["status"] == "failed"

    wrong = spec(upload(api, export_bytes(TinyModel(seed=22), token_ids())))
    wrong["inputs"] = [{"name": "input_ids", "shape": [1, 8], "dtype": "float32"}]
    queued = api.post("/v1/compile", json={"spec": wrong})
    assert queued.status_code == 202, queued.text
    job = wait_job(api, queued.json()["job"]["id"], timeout_s=120)
    assert (job["state"], job["failure_class"]) == ("failed", "invalid_input"), job
    assert "dtype float32 in the manifest, int64 in the exported program" in job["message"]


def test_toolchains_listing_shows_torch_neuronx(cli, torch_neuronx_worker: Process) -> None:
    listing = cli("toolchains", "--json")
    assert listing.rc == 0, listing.stderr
    body = listing.json()
    release = next(r for r in body["releases"] if r["sdk"] == "2.31.1")
    assert release["torch_neuronx"] == ["2.9.0.2.15.32035"]
    live = next(t for t in body["live"] if t["compiler"] == f"torch-neuronx=={DOUBLE_TORCH_NEURONX_VERSION}")
    assert live["packages"] == f"neuronx-cc=={NEURONX_CC_VERSION}, torch=={TORCH_VERSION}"
    assert live["sdk_releases"] == []  # the double's version is in no SDK release
    human = cli("toolchains")
    assert human.rc == 0 and "torch-neuronx" in human.stdout
