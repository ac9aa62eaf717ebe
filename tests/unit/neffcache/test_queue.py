"""Queue names (neffcache/queue.py): a job's queue is served only by a worker whose toolchain
has every version the job's key names."""

from __future__ import annotations

from typing import Any

import pytest

from neffcache.queue import queue_for_manifest, queues_for_toolchain

TORCH_NEURONX = "2.9.0.2.15.32035"
NEURONX_CC = "2.27.5334.0+2d6a2ba2b"
WORKER_PACKAGES = {"torch": "2.9.0", "neuronx-cc": NEURONX_CC}


def torch_neuronx_manifest(**compiler: Any) -> dict[str, Any]:
    return {"target": "inf2", "compiler": {"name": "torch-neuronx", "version": TORCH_NEURONX, "torch_version": "2.9.0",
                                           "neuronx_cc_version": NEURONX_CC, **compiler}}


def worker_queues(**packages: str) -> list[str]:
    return queues_for_toolchain("nc", "torch-neuronx", TORCH_NEURONX, ["inf2", "trn1"], [],
                                {**WORKER_PACKAGES, **packages})


@pytest.mark.parametrize(("case", "compiler"), [
    ("exact versions", {}),
    ("neuronx-cc named by its release", {"neuronx_cc_version": "2.27.5334.0"}),
])
def test_a_torch_neuronx_job_reaches_a_worker_with_every_version(case: str, compiler: dict[str, str]) -> None:
    assert queue_for_manifest("nc", torch_neuronx_manifest(**compiler)) in worker_queues()


@pytest.mark.parametrize(("case", "packages"), [
    ("another torch", {"torch": "2.8.0"}),
    ("another neuronx-cc", {"neuronx-cc": "2.26.1.0+aaaa"}),
])
def test_a_torch_neuronx_job_never_reaches_a_worker_with_another_version(case: str, packages: dict[str, str]) -> None:
    assert queue_for_manifest("nc", torch_neuronx_manifest()) not in worker_queues(**packages)


def test_neuronx_cc_queues_are_named_by_the_compiler_alone() -> None:
    manifest = {"target": "trn2", "compiler": {"name": "neuronx-cc", "version": "2.27.5334.0"}}
    assert queue_for_manifest("nc", manifest) == "nc:neuronx-cc:2.27.5334.0:neuron"
    assert queue_for_manifest("nc", manifest) in queues_for_toolchain("nc", "neuronx-cc", NEURONX_CC, ["trn2"], [])
