"""Publishing artifacts compiled elsewhere, downloading blobs, and annotations."""

from __future__ import annotations

import httpx

from tests.doubles.neuronx_cc_double import build_neff
from tests.support.api import digest_of, hlo_model, neuron_spec, upload, wait_job
from tests.support.stack import SESSION_ADMIN


def _publish(api: httpx.Client, spec: dict, neff_bytes: bytes, **extra) -> httpx.Response:
    neff_digest = upload(api, neff_bytes)
    body = {"spec": spec, "files": [{"name": "model.neff", "digest": neff_digest}], **extra}
    return api.post("/v1/artifacts", json=body)


def test_publish_validates_records_and_is_immutable(api: httpx.Client) -> None:
    spec = neuron_spec(upload(api, hlo_model()))
    neff = build_neff({"neff.json": b"{}"}, lnc_size=1, feature_bits=4, neff_build_version="2.27.5334.0+2d6a2ba2b")
    first = _publish(api, spec, neff, compile_seconds=812.5, annotations={"neuron_cache.module": "MODULE_1+ab"})
    assert first.status_code == 201, first.text
    key = first.json()["key"]
    artifact = api.get(f"/v1/artifacts/{key}").json()
    assert artifact["files"][0]["neff"]["feature_bits"] == 4 and artifact["compile_seconds"] == 812.5
    assert artifact["annotations"]["neuron_cache.module"] == "MODULE_1+ab"
    assert artifact["origin"] == {"kind": "pushed", "token": SESSION_ADMIN} and artifact["job_id"] is None
    assert "published_by" not in artifact["annotations"]
    assert api.post("/v1/lookup", json={"spec": spec}).status_code == 200

    again = _publish(api, spec, neff)
    assert again.status_code == 200 and again.json()["status"] == "exists"
    other = _publish(api, spec, build_neff({"neff.json": b"{\"other\": 1}"}))
    assert other.status_code == 409 and other.json()["error"] == "artifact_exists"


def test_publish_refuses_an_invalid_neff(api: httpx.Client) -> None:
    spec = neuron_spec(upload(api, hlo_model()))
    truncated = build_neff({"neff.json": b"{}"})[:-100]
    r = _publish(api, spec, truncated)
    assert r.status_code == 422 and r.json()["error"] == "invalid_neff" and "model.neff" in r.json()["detail"]
    assert api.post("/v1/lookup", json={"spec": spec}).status_code == 404


def test_publish_needs_the_blobs(api: httpx.Client) -> None:
    spec = neuron_spec(upload(api, hlo_model()))
    missing = digest_of(b"never uploaded" + hlo_model())
    r = api.post("/v1/artifacts", json={"spec": spec, "files": [{"name": "model.neff", "digest": missing}]})
    assert r.status_code == 409 and r.json()["error"] == "blob_missing" and missing in r.json()["detail"]
    r = api.post("/v1/artifacts", json={"spec": spec, "files": []})
    assert r.status_code == 422 and "files" in r.json()["detail"]


def test_blob_download(api: httpx.Client) -> None:
    data = hlo_model()
    digest = upload(api, data)
    r = api.get(f"/v1/blobs/{digest}", follow_redirects=True)
    assert r.status_code == 200 and r.content == data
    assert api.get(f"/v1/blobs/{digest_of(b'nope' + data)}").status_code == 404


def test_compile_annotations_travel_to_the_artifact(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    annotations = {"neuron_cache.module": "MODULE_9+cd"}
    r = api.post("/v1/compile", json={"spec": neuron_spec(digest), "annotations": annotations})
    job = wait_job(api, r.json()["job"]["id"])
    assert job["annotations"] == {"neuron_cache.module": "MODULE_9+cd"}
    assert api.get(f"/v1/artifacts/{r.json()['key']}").json()["annotations"] == {"neuron_cache.module": "MODULE_9+cd"}
    bad = api.post("/v1/compile", json={"spec": neuron_spec(digest), "annotations": {"Bad Name": "x"}})
    assert bad.status_code == 422 and "annotations" in bad.json()["detail"]
