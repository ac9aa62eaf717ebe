"""SDK-paired toolchains: the release table, runtime-only specs, and mismatched pairs."""

from __future__ import annotations

import json

from neffcache.sdk import SdkTable, convert_n2_manifest
from neffcache.sdk import main as sdk_main
from tests.support.api import NEURON_COMPILER


def test_table_knows_which_versions_ship_together() -> None:
    sdk = SdkTable.load()
    assert sdk.with_compiler(NEURON_COMPILER) == ["2.32.0"]
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


