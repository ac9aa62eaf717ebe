"""Every refusal of the HTTP API: its status, its stable code, and a detail naming the field."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.conftest import MAX_UPLOAD_BYTES
from tests.support.api import digest_of, error_body, hlo_model, inductor_spec, neuron_spec, upload


def test_upload_with_wrong_digest_is_refused_and_nothing_is_kept(api: httpx.Client) -> None:
    data = hlo_model()
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    error_body(api.put(f"/v1/blobs/{wrong}", content=data), 400, "digest_mismatch", wrong.split(":")[1])
    assert api.head(f"/v1/blobs/{wrong}").status_code == 404
    assert api.head(f"/v1/blobs/{digest_of(data)}").status_code == 404


def test_upload_twice_is_201_then_200(api: httpx.Client) -> None:
    data = hlo_model()
    digest = digest_of(data)
    assert api.head(f"/v1/blobs/{digest}").status_code == 404
    assert api.put(f"/v1/blobs/{digest}", content=data).status_code == 201
    second = api.put(f"/v1/blobs/{digest}", content=data)
    assert second.status_code == 200 and second.json()["created"] is False
    head = api.head(f"/v1/blobs/{digest}")
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))


@pytest.mark.parametrize("bad", ["sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64])
def test_malformed_digest_in_path(api: httpx.Client, bad: str) -> None:
    error_body(api.put(f"/v1/blobs/{bad}", content=b"x"), 400, "invalid_digest", "digest")


def test_oversized_upload_declared_length(api: httpx.Client) -> None:
    data = b"\0" * (MAX_UPLOAD_BYTES + 1)
    error_body(api.put(f"/v1/blobs/{digest_of(data)}", content=data), 413, "too_large", str(MAX_UPLOAD_BYTES))
    assert api.head(f"/v1/blobs/{digest_of(data)}").status_code == 404


def test_oversized_upload_streamed_without_length(api: httpx.Client) -> None:
    chunk = b"\1" * (1024 * 1024)
    count = MAX_UPLOAD_BYTES // len(chunk) + 2
    digest = "sha256:" + hashlib.sha256(chunk * count).hexdigest()

    def body():  # a generator: sent chunked, with no Content-Length to refuse up front
        for _ in range(count):
            yield chunk

    try:
        r = api.put(f"/v1/blobs/{digest}", content=body())
        error_body(r, 413, "too_large")
    except httpx.WriteError:
        pass  # the server answered 413 and closed while we were still sending: also a refusal
    assert api.head(f"/v1/blobs/{digest}").status_code == 404


@pytest.fixture
def blob(api: httpx.Client) -> str:
    return upload(api, hlo_model())


@pytest.mark.parametrize(
    "change, status, code, field",
    [
        ({"target": "trn9"}, 422, "unknown_target", "spec.target"),
        ({"inputs": [{"name": "x", "shape": [1, 8], "dtype": "float33"}]},
         422, "invalid_dtype", "spec.inputs[0].dtype"),
        ({"inputs": [{"name": "x", "shape": [1, -8], "dtype": "float32"}]},
         422, "invalid_shape", "spec.inputs[0].shape"),
        ({"inputs": [{"name": "x", "shape": [], "dtype": "float32"}]}, 422, "invalid_shape", "spec.inputs[0].shape"),
        ({"inputs": [{"name": "x", "shape": [0, 8], "dtype": "float32"}]},
         422, "invalid_shape", "spec.inputs[0].shape"),
        ({"compiler": {"name": "gcc", "flags": []}}, 422, "unknown_compiler", "spec.compiler.name"),
        ({"compiler": {"name": "neuronx-cc", "flags": ["--optlevel=7"]}}, 422, "invalid_flags", "--optlevel"),
        ({"compiler": {"name": "neuronx-cc", "flags": ["-lnc", "2"]}}, 422, "invalid_flags", "trn1"),
        ({"compiler": {"name": "neuronx-cc", "flags": ["--target=trn2"]}}, 422, "invalid_flags", "trn2"),
        ({"compiler": {"name": "neuronx-cc", "flags": ["bad\nflag"]}}, 422, "invalid_flags", "spec.compiler.flags"),
        ({"target": "cpu"}, 422, "invalid_spec", "neuronx-cc"),
        ({"model": {"format": "hlo", "digest": "sha256:nope"}}, 422, "invalid_spec", "spec.model.digest"),
        ({"namespace": "Bad Namespace"}, 422, "invalid_spec", "spec.namespace"),
        ({"surprise": 1}, 422, "invalid_spec", "spec.surprise"),
    ],
)
def test_invalid_spec_is_refused_naming_the_field(api: httpx.Client, blob: str, change: dict, status: int,
                                                  code: str, field: str) -> None:
    spec = {**neuron_spec(blob), **change}
    for path in ("/v1/compile", "/v1/lookup"):
        error_body(api.post(path, json={"spec": spec}), status, code, field)


def test_a_torch_export_spec_needs_inputs(api: httpx.Client) -> None:
    blob = upload(api, b"pt2 " + hlo_model())
    r = api.post("/v1/compile", json={"spec": inductor_spec(blob, [1, 8], inputs=[])})
    error_body(r, 422, "invalid_spec", "inputs", "torch-export")


def test_missing_blob(api: httpx.Client) -> None:
    missing = digest_of(b"never uploaded " + hlo_model())
    error_body(api.post("/v1/compile", json={"spec": neuron_spec(missing)}), 409, "blob_missing", missing)


def test_malformed_json(api: httpx.Client) -> None:
    r = api.post("/v1/compile", content=b'{"spec": {', headers={"content-type": "application/json"})
    error_body(r, 400, "malformed_json")


def test_missing_spec(api: httpx.Client) -> None:
    error_body(api.post("/v1/compile", json={}), 422, "invalid_spec", "spec")


def test_toolchain_that_no_worker_offers(api: httpx.Client) -> None:
    blob = upload(api, b"not really a torch.export program " + hlo_model())
    spec = inductor_spec(blob, [1, 8], target="cuda", compiler={"name": "inductor", "flags": ["cuda.arch=sm_90"]})
    r = api.post("/v1/compile", json={"spec": spec})
    body = error_body(r, 422, "toolchain_unavailable", "spec.compiler.version")
    assert body["candidates"] == []


def test_inductor_runtime_must_be_the_compiling_torch(api: httpx.Client) -> None:
    blob = upload(api, b"pt2 " + hlo_model())
    spec = inductor_spec(blob, [1, 8], compiler={"name": "inductor", "version": "2.13.0+cpu"},
                         runtime={"name": "torch", "version": "2.12.0"})
    error_body(api.post("/v1/compile", json={"spec": spec}), 422, "toolchain_mismatch", "2.12.0")


@pytest.mark.parametrize("path", ["/v1/jobs/00000000", "/v1/artifacts/" + "0" * 64, "/v1/artifacts/00000000",
                                  "/v1/jobs/00000000/log", "/v1/nothing"])
def test_unknown_things_are_404(api: httpx.Client, path: str) -> None:
    error_body(api.get(path), 404, "not_found")


@pytest.mark.parametrize(("path", "field"), [("/v1/jobs/nope", "job_id"), ("/v1/jobs/nope/log", "job_id"),
                                             ("/v1/artifacts/0123abc", "key"), ("/v1/artifacts/XYZ12345", "key")])
def test_malformed_keys_and_job_ids_are_refused(api: httpx.Client, path: str, field: str) -> None:
    error_body(api.get(path), 400, "invalid_parameter", field)


def test_cancel_unknown_job(api: httpx.Client) -> None:
    error_body(api.post("/v1/jobs/00000000/cancel"), 404, "not_found", "00000000")


@pytest.mark.parametrize("query, field", [("limit=0", "limit"), ("limit=abc", "limit"), ("state=sleeping", "state"),
                                          ("cursor=@@@", "cursor")])
def test_bad_list_parameters(api: httpx.Client, query: str, field: str) -> None:
    error_body(api.get(f"/v1/jobs?{query}"), 400, "invalid_parameter", field)
