"""SDK-paired toolchains: the release table, runtime-only specs, and mismatched pairs."""

from __future__ import annotations

import json

import httpx
import pytest

from neffcache.key import key_for_spec
from neffcache.sdk import SdkTable, convert_n2_manifest
from neffcache.sdk import main as sdk_main
from tests.support.api import hlo_model, neuron_spec, upload

DOUBLE_VERSION = "2.27.5334.0+2d6a2ba2b"  # SDK 2.32.0, whose runtime is 2.34.10.0


def test_table_knows_which_versions_ship_together() -> None:
    sdk = SdkTable.load()
    assert sdk.with_compiler(DOUBLE_VERSION) == ["2.32.0"]
    assert sdk.with_runtime("2.33.10.0") == ["2.31.1", "2.31.0"]
    assert sdk.compilers_for_runtime("2.34.10.0") == {"2.27.5334.0"}
    assert sdk.runtimes_for_compiler("2.26.6360.0") == {"2.33.10.0"}
    assert sdk.paired("2.27.5334.0", "2.34.10.0") is True
    assert sdk.paired("2.27.5334.0", "2.33.10.0") is False
    assert sdk.paired("9.9.9.9", "2.34.10.0") is None  # newer than the table: not judged
    assert sdk.releases[0].sdk == "2.32.0" and sdk.releases[-1].sdk == "2.3.0"


def test_refresh_converts_aws_n2_manifest(tmp_path) -> None:
    manifest = {
        "manifest_version": "9.1.0", "manifest_date": "01/02/2027",
        "neuron_releases": [
            {"neuron_version": "9.0.0", "packages": [
                {"name": "neuronx-cc", "version": "3.0.1.0", "supported_instances": ["trn2", "trn3"]},
                {"name": "aws-neuronx-runtime-lib", "version": "3.1.0.0", "supported_instances": ["trn2"]},
                {"name": "neuron-cc", "version": "1.0", "supported_instances": ["inf1"]},
            ]},
            {"neuron_version": "9.1.0", "packages": [
                {"name": "neuronx-cc", "version": "3.0.2.0", "supported_instances": ["trn2"]},
                {"name": "aws-neuronx-runtime-lib", "version": "3.1.1.0", "supported_instances": ["trn2"]},
            ]},
            {"neuron_version": "1.0.0", "packages": [{"name": "neuron-cc", "version": "1.0"}]},
        ],
    }
    source = tmp_path / "n2-manifest.json"
    source.write_text(json.dumps(manifest))
    out = tmp_path / "table.json"
    assert sdk_main(["refresh", str(source), "--out", str(out)]) == 0
    table = json.loads(out.read_text())
    assert [r["sdk"] for r in table["releases"]] == ["9.1.0", "9.0.0"]  # inf1-only releases dropped
    assert table["releases"][1]["packages"] == {"aws-neuronx-runtime-lib": ["3.1.0.0"], "neuronx-cc": ["3.0.1.0"]}
    assert table["releases"][1]["instances"] == ["trn2", "trn3"]
    assert SdkTable.from_data(convert_n2_manifest(manifest)).paired("3.0.1.0", "3.1.1.0") is False


@pytest.mark.stack
def test_runtime_only_spec_gets_the_compiler_of_its_release(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    spec = neuron_spec(digest, runtime={"name": "neuron-runtime", "version": "2.34.10.0"})
    body = api.post("/v1/lookup", json={"spec": spec}).json()
    assert body["error"] == "not_found"
    manifest, key = key_for_spec({**spec, "namespace": "default",
                                  "compiler": {**spec["compiler"], "version": DOUBLE_VERSION}})
    assert body["key"] == key


@pytest.mark.stack
def test_compiler_only_spec_gets_the_runtime_of_its_release(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    spec = neuron_spec(digest, runtime={"name": "neuron-runtime"})
    spec["compiler"]["version"] = "2.27.5334.0"
    r = api.post("/v1/compile", json={"spec": spec})
    assert r.status_code == 202, r.text
    assert r.json()["spec"]["runtime"]["version"] == "2.34.10.0"
    api.post(f"/v1/jobs/{r.json()['job']['id']}/cancel")


@pytest.mark.stack
def test_mismatched_pair_is_refused_naming_both_releases_unless_allowed(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    spec = neuron_spec(digest, runtime={"name": "neuron-runtime", "version": "2.33.10.0"})
    spec["compiler"]["version"] = DOUBLE_VERSION
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


@pytest.mark.stack
def test_toolchains_lists_releases_and_live_workers(api: httpx.Client) -> None:
    body = api.get("/v1/toolchains").json()
    newest = body["releases"][0]
    assert newest == {"sdk": "2.32.0", "neuronx_cc": ["2.27.5334.0"], "runtime": ["2.34.10.0"],
                      "instances": newest["instances"], "live_workers": 1}
    assert all(r["live_workers"] == 0 for r in body["releases"][1:])
    live = {t["compiler"]: t for t in body["live"]}
    assert live[f"neuronx-cc=={DOUBLE_VERSION}"]["sdk_releases"] == ["2.32.0"]
    assert any(c.startswith("inductor==") for c in live)
    workers = api.get("/v1/workers").json()["workers"]
    neuron = [w for w in workers if w["toolchain"]["compiler_name"] == "neuronx-cc" and w["state"] != "stopped"]
    assert neuron[0]["toolchain"]["sdk_releases"] == ["2.32.0"]
