"""SDK release pairing as the service applies it: runtime-only and compiler-only specs, mismatched
pairs, /v1/toolchains (the table itself is tested in tests/unit/neffcache/test_sdk.py)."""

from __future__ import annotations

import httpx

from neffcache.key import key_for_spec
from tests.support.api import NEURON_COMPILER, hlo_model, neuron_spec, upload


def test_runtime_only_spec_gets_the_compiler_of_its_release(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    spec = neuron_spec(digest, runtime={"name": "neuron-runtime", "version": "2.34.10.0"})
    body = api.post("/v1/lookup", json={"spec": spec}).json()
    assert body["error"] == "not_found"
    manifest, key = key_for_spec({**spec, "namespace": "default",
                                  "compiler": {**spec["compiler"], "version": NEURON_COMPILER}})
    assert body["key"] == key


def test_compiler_only_spec_gets_the_runtime_of_its_release(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    spec = neuron_spec(digest, runtime={"name": "neuron-runtime"})
    spec["compiler"]["version"] = "2.27.5334.0"
    r = api.post("/v1/compile", json={"spec": spec})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["runtime"]["version"] == "2.34.10.0"
    api.post(f"/v1/jobs/{r.json()['job']['id']}/cancel")


def test_mismatched_pair_is_refused_naming_both_releases_unless_allowed(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    spec = neuron_spec(digest, runtime={"name": "neuron-runtime", "version": "2.33.10.0"})
    spec["compiler"]["version"] = NEURON_COMPILER
    refused = api.post("/v1/compile", json={"spec": spec})
    assert refused.status_code == 422 and refused.json()["error"] == "toolchain_mismatch"
    detail = refused.json()["detail"]
    assert "2.32.0" in detail and "2.31.1" in detail and "2.31.0" in detail
    assert refused.json()["compiler_releases"] == ["2.32.0"]

    allowed = api.post("/v1/compile", json={"spec": {**spec, "allow_toolchain_mismatch": True}})
    assert allowed.status_code == 202, allowed.text
    manifest, key = key_for_spec(allowed.json()["spec"])
    assert manifest["allow_toolchain_mismatch"] is True and allowed.json()["key"] == key
    paired_key = key_for_spec({**allowed.json()["spec"], "allow_toolchain_mismatch": False})[1]
    assert paired_key != key  # the override is part of the key


def test_toolchains_lists_releases_and_live_workers(api: httpx.Client) -> None:
    body = api.get("/v1/toolchains").json()
    newest = body["releases"][0]
    # SDK 2.32.0 ships no torch-neuronx (AWS's release manifest lists none).
    # What its toolchains serve (artifacts, bytes, lookup hits and their share) depends on the tests before.
    served = {k: newest.pop(k) for k in ("artifacts", "bytes", "lookup_hits", "lookup_hits_share")}
    assert newest == {"sdk": "2.32.0", "neuronx_cc": ["2.27.5334.0"], "runtime": ["2.34.10.0"], "torch_neuronx": [],
                      "instances": newest["instances"], "live_workers": 1}
    assert all(isinstance(served[k], int) for k in ("artifacts", "bytes", "lookup_hits"))
    assert all(r["live_workers"] == 0 for r in body["releases"][1:])
    live = {t["compiler"]: t for t in body["live"]}
    assert live[f"neuronx-cc=={NEURON_COMPILER}"]["sdk_releases"] == ["2.32.0"]
    assert any(c.startswith("inductor==") for c in live)
    workers = api.get("/v1/workers").json()["workers"]
    neuron = [w for w in workers if w["toolchain"]["compiler_name"] == "neuronx-cc" and w["state"] != "stopped"]
    assert neuron[0]["toolchain"]["sdk_releases"] == ["2.32.0"]
