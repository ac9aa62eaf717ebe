"""Helpers the stack tests share: upload a blob, build a spec, wait for a job."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import httpx

NEURON_RUNTIME = "2.34.10.0"
# The neuronx-cc of SDK 2.32.0 (whose runtime is NEURON_RUNTIME), as the binary reports it; what
# the test double (tests/doubles/neuronx_cc_double.py) answers to --version by default.
NEURON_COMPILER = "2.27.5334.0+2d6a2ba2b"
# A key manifest as the service stores it, for rows written straight into a test's database.
SAMPLE_MANIFEST: dict[str, Any] = {
    "namespace": "default", "model": {"format": "hlo", "digest": "sha256:" + "0" * 64},
    "inputs": [{"name": "x", "shape": [1], "dtype": "float32"}], "target": "trn1",
    "compiler": {"name": "neuronx-cc", "version": NEURON_COMPILER, "flags": []},
    "runtime": {"name": "neuron-runtime", "version": NEURON_RUNTIME},
}


def error_body(r: httpx.Response, status: int, code: str, *in_detail: str) -> dict[str, Any]:
    """The error body of `r`, after checking its status, its code and what its detail names."""
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    for text in in_detail:
        assert text in body["detail"], body
    return body


def key_with_prefix(prefix: str, fill: str) -> str:
    """A 64-character key that starts with `prefix`."""
    return (prefix + fill * 64)[:64]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def upload(api: httpx.Client, data: bytes) -> str:
    digest = digest_of(data)
    r = api.put(f"/v1/blobs/{digest}", content=data)
    assert r.status_code in (200, 201), r.text
    return digest


def hlo_model(*directives: str) -> bytes:
    """A unique stand-in HLO module; directives steer the neuronx-cc test double."""
    return (f"HloModule test_{uuid.uuid4().hex}\n" + "\n".join(directives)).encode()


def neuron_spec(digest: str, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"format": "hlo", "digest": digest},
        "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64"}],
        "target": "trn1",
        "compiler": {"name": "neuronx-cc", "flags": ["-O2"]},
        "runtime": {"name": "neuron-runtime", "version": NEURON_RUNTIME},
    }
    spec.update(overrides)
    return spec


def inductor_spec(digest: str, shape: list[int], **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"format": "torch-export", "digest": digest},
        "inputs": [{"name": "x", "shape": shape, "dtype": "float32"}],
        "target": "cpu",
        "compiler": {"name": "inductor", "flags": []},
    }
    spec.update(overrides)
    return spec


def wait_job(api: httpx.Client, job_id: str, states: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
             timeout_s: float = 120, **match: Any) -> dict[str, Any]:
    """Poll until the job is in one of `states` (and its fields equal `match`)."""
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states and all(job.get(k) == v for k, v in match.items()):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states} {match} in {timeout_s} s; last: {job}")


def stats(api: httpx.Client) -> dict[str, Any]:
    r = api.get("/v1/stats")
    assert r.status_code == 200, r.text
    return r.json()


def published(api: httpx.Client, *directives: str) -> tuple[bytes, dict[str, Any]]:
    """Compile a fresh model on the neuronx-cc double; (model bytes, artifact)."""
    data = hlo_model(*directives)
    digest = upload(api, data)
    body = api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()
    assert wait_job(api, body["job"]["id"])["state"] == "succeeded"
    return data, api.get(f"/v1/artifacts/{body['key']}").json()
