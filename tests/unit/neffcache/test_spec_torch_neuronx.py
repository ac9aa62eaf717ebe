"""torch-neuronx in the spec schema and the SDK release table."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from neffcache.sdk import SdkTable
from neffcache.spec import COMPILERS, CompileSpec


def raw(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"format": "torch-export", "digest": "sha256:" + "ab" * 32},
        "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64"}],
        "target": "inf2",
        "compiler": {"name": "torch-neuronx"},
    }
    spec.update(overrides)
    return spec


@pytest.mark.parametrize("fmt", ["torch-export", "torchscript"])
def test_both_pytorch_formats_are_taken_and_the_runtime_is_neurons(fmt: str) -> None:
    spec = CompileSpec.model_validate(raw(model={"format": fmt, "digest": "sha256:" + "ab" * 32}))
    assert spec.runtime is not None and spec.runtime.name == "neuron-runtime"
    assert not spec.is_resolved()
    assert COMPILERS["torch-neuronx"]["format"] == "torch-export"  # what a spec file's format defaults to


def test_resolved_needs_all_four_versions() -> None:
    versions = {"version": "2.9.0.2.15.32035", "torch_version": "2.9.0", "neuronx_cc_version": "2.26.6360.0"}
    runtime = {"name": "neuron-runtime", "version": "2.33.10.0"}

    def resolved() -> bool:
        spec = raw(compiler={"name": "torch-neuronx", **versions}, runtime=runtime)
        return CompileSpec.model_validate(spec).is_resolved()

    assert resolved()
    del versions["torch_version"]
    assert not resolved()


@pytest.mark.parametrize(("overrides", "words"), [
    ({"target": "cpu"}, "target 'cpu' is not built by compiler 'torch-neuronx'"),
    ({"model": {"format": "hlo", "digest": "sha256:" + "ab" * 32}}, "it takes 'torch-export' or 'torchscript'"),
    ({"inputs": []}, "at least one input"),
    ({"compiler": {"name": "torch-neuronx", "torch_version": "bad version"}}, "torch_version"),
])
def test_refused(overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        CompileSpec.model_validate(raw(**overrides))


@pytest.mark.parametrize("field", ["torch_version", "neuronx_cc_version", "inline_weights_to_neff"])
def test_its_fields_belong_to_it_alone(field: str) -> None:
    value: Any = False if field == "inline_weights_to_neff" else "2.9.0"
    spec = raw(model={"format": "hlo", "digest": "sha256:" + "ab" * 32}, target="trn1",
               compiler={"name": "neuronx-cc", field: value})
    with pytest.raises(ValidationError, match=f"compiler.{field}: only compiler 'torch-neuronx' takes it"):
        CompileSpec.model_validate(spec)


def test_torchscript_is_torch_neuronxs_alone() -> None:
    spec = raw(model={"format": "torchscript", "digest": "sha256:" + "ab" * 32}, target="cpu",
               compiler={"name": "inductor"})
    with pytest.raises(ValidationError, match="does not fit compiler 'inductor'"):
        CompileSpec.model_validate(spec)


def test_the_sdk_table_pairs_torch_neuronx_with_its_runtime() -> None:
    table = SdkTable.load()
    assert table.with_torch_neuronx("2.9.0.2.15.32035") == ["2.31.1", "2.31.0"]
    assert table.torch_neuronx_paired("2.9.0.2.15.32035", "2.33.10.0") is True
    assert table.torch_neuronx_paired("2.9.0.2.15.32035", "2.34.10.0") is False
    assert table.torch_neuronx_paired("9.9.9.9", "2.34.10.0") is None
    assert next(r for r in table.releases if r.sdk == "2.31.1").torch_neuronx == ("2.9.0.2.15.32035",)


def test_sdk_releases_of_each_neuron_compiler() -> None:
    from neffcache.sdk import sdk_releases_of

    table = SdkTable.load()
    assert sdk_releases_of(table, "torch-neuronx", "2.9.0.2.15.32035") == ["2.31.1", "2.31.0"]
    assert sdk_releases_of(table, "neuronx-cc", "2.27.5334.0+2d6a2ba2b") == ["2.32.0"]
    assert sdk_releases_of(table, "inductor", "2.13.0") == []
