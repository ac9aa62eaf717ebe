"""The key of a compiled-artifact folder (NxD Inference's compiled_model_path, `push --dir`): the
neuron config canonicalised into it (documented defaults filled in, derived fields explicit, what
does not change the output dropped), NxD Inference's version in the compiler object, every field
that changes the output changes the key, and no other spec's key moves."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import ValidationError

from neffcache.errors import InvalidSpec
from neffcache.key import build_manifest, canonical_json, canonical_neuron_config, key_for_spec, manifest_diff
from neffcache.spec import CompileSpec
from tests.unit.neffcache.test_key_torch_neuronx import GOLDEN_TORCH_NEURONX_KEY, torch_neuronx_spec

Spec = dict[str, Any]


def folder_spec() -> Spec:
    """An NxD Inference folder of SDK 2.31.1's torch-neuronx toolchain, its config written loosely."""
    return {
        "model": {"format": "hf-checkpoint", "digest": "sha256:" + "5e" * 32},
        "inputs": [],  # the shapes are the neuron config's
        "target": "trn2",
        "compiler": {"name": "torch-neuronx", "version": "2.9.0.2.15.32035", "flags": ["-O1", "--logfile", "/w/log"],
                     "torch_version": "2.9.0", "neuronx_cc_version": "2.26.6360.0",
                     "nxd_inference_version": "0.7.15063"},
        "runtime": {"name": "neuron-runtime", "version": "2.33.10.0"},
        "namespace": "default",
        "neuron_config": {"tp_degree": 32, "batch_size": 4, "seq_len": 4096, "enable_bucketing": True,
                          "context_encoding_buckets": [1024, 2048, 4096], "token_generation_buckets": [4096],
                          "on_device_sampling_config": {"top_k": 1}, "torch_dtype": "torch.bfloat16",
                          "quantized_checkpoints_path": "/tmp/q.pt", "fused_qkv": True, "logical_nc_config": 2},
    }


# CHANGING EITHER LITERAL MEANS EVERY PUSHED FOLDER BECOMES UNREACHABLE (see the golden keys in
# test_key.py).
GOLDEN_FOLDER_JSON = (
    '{"allow_toolchain_mismatch":false,"compiler":{"flags":["--optlevel=1"],"inline_weights_to_neff":true,'
    '"name":"torch-neuronx","neuronx_cc_version":"2.26.6360.0","nxd_inference_version":"0.7.15063",'
    '"torch_version":"2.9.0","version":"2.9.0.2.15.32035"},"inputs":[],"isa":null,"key_version":1,'
    '"model":{"digest":"sha256:5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e",'
    '"format":"hf-checkpoint"},"namespace":"default","neuron_config":{"batch_size":4,'
    '"context_encoding_buckets":[1024,2048,4096],"ctx_batch_size":4,"enable_bucketing":true,"fused_qkv":true,'
    '"is_continuous_batching":false,"logical_nc_config":2,"max_batch_size":4,"max_context_length":4096,'
    '"on_device_sampling_config":{"deterministic":false,"do_sample":false,"dynamic":false,"global_topk":256,'
    '"temperature":1.0,"top_k":1,"top_p":1.0},"quantized":false,"seq_len":4096,"tkg_batch_size":4,'
    '"token_generation_buckets":[4096],"torch_dtype":"bfloat16","tp_degree":32},"runtime":{"name":"neuron-runtime",'
    '"version":"2.33.10.0"},"target":"trn2"}'
)
GOLDEN_FOLDER_KEY = "ad1d4aa9a7a3e3eee55b60fece89613afb6a387733357a5cd10b249e45efbc4f"


def key_of(spec: Spec) -> str:
    return key_for_spec(spec)[1]


def test_golden_key_of_a_folder() -> None:
    manifest, key = key_for_spec(folder_spec())
    assert canonical_json(manifest).decode("utf-8") == GOLDEN_FOLDER_JSON
    assert key == GOLDEN_FOLDER_KEY == hashlib.sha256(GOLDEN_FOLDER_JSON.encode()).hexdigest()


def test_the_schema_and_the_key_agree() -> None:
    dumped = CompileSpec.model_validate(folder_spec()).model_dump(mode="json")
    assert key_of(dumped) == GOLDEN_FOLDER_KEY


def test_a_spec_without_a_neuron_config_keeps_its_key() -> None:
    dumped = CompileSpec.model_validate(torch_neuronx_spec()).model_dump(mode="json")
    assert "neuron_config" not in dumped and "nxd_inference_version" not in dumped["compiler"]
    assert key_of(dumped) == GOLDEN_TORCH_NEURONX_KEY
    assert "neuron_config" not in build_manifest(dumped)


def _config(name: str, value: Any) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        spec["neuron_config"][name] = value

    return edit


def _compiler(name: str, value: Any) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        spec["compiler"][name] = value

    return edit


def _sampling(name: str, value: Any) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        spec["neuron_config"]["on_device_sampling_config"][name] = value

    return edit


def _quantized(spec: Spec) -> None:
    spec["neuron_config"]["quantized"] = True


def _target(spec: Spec) -> None:
    spec["target"] = "trn1"


def _model(spec: Spec) -> None:
    spec["model"]["digest"] = "sha256:" + "6f" * 32


def _runtime(spec: Spec) -> None:
    spec["runtime"]["version"] = "2.32.31.0"


S = "neuron_config.on_device_sampling_config"
FIELD_CHANGES: dict[str, tuple[Callable[[Spec], Any], list[str]]] = {
    "tp_degree": (_config("tp_degree", 64), ["neuron_config.tp_degree"]),
    "batch_size": (_config("batch_size", 8), ["neuron_config.batch_size", "neuron_config.ctx_batch_size",
                                              "neuron_config.tkg_batch_size", "neuron_config.max_batch_size"]),
    "ctx_batch_size": (_config("ctx_batch_size", 1), ["neuron_config.ctx_batch_size"]),
    "seq_len": (_config("seq_len", 8192), ["neuron_config.seq_len", "neuron_config.max_context_length"]),
    "max_context_length": (_config("max_context_length", 2048), ["neuron_config.max_context_length"]),
    "context_encoding_buckets": (_config("context_encoding_buckets", [4096]),
                                 ["neuron_config.context_encoding_buckets"]),
    "token_generation_buckets": (_config("token_generation_buckets", [2048, 4096]),
                                 ["neuron_config.token_generation_buckets"]),
    "enable_bucketing": (_config("enable_bucketing", False), ["neuron_config.enable_bucketing"]),
    "is_continuous_batching": (_config("is_continuous_batching", True), ["neuron_config.is_continuous_batching"]),
    "on_device_sampling off": (_config("on_device_sampling_config", None), [S]),
    "on_device_sampling top_k": (_sampling("top_k", 50), [S]),
    "on_device_sampling dynamic": (_sampling("dynamic", True), [S]),
    "quantized": (_quantized, ["neuron_config.quantized", "neuron_config.quantization_type",
                               "neuron_config.quantization_dtype"]),
    "torch_dtype": (_config("torch_dtype", "float16"), ["neuron_config.torch_dtype"]),
    "logical_nc_config": (_config("logical_nc_config", 1), ["neuron_config.logical_nc_config"]),
    "a field this module does not know": (_config("attn_kernel_enabled", True),
                                          ["neuron_config.attn_kernel_enabled"]),
    "nxd_inference_version": (_compiler("nxd_inference_version", "0.6.10598"), ["compiler.nxd_inference_version"]),
    "torch_neuronx version": (_compiler("version", "2.9.0.2.14.27725"), ["compiler.version"]),
    "neuronx_cc_version": (_compiler("neuronx_cc_version", "2.25.3371.0"), ["compiler.neuronx_cc_version"]),
    "torch_version": (_compiler("torch_version", "2.9.1"), ["compiler.torch_version"]),
    "flags": (_compiler("flags", ["-O2"]), ["compiler.flags"]),
    "model config and weights": (_model, ["model.digest"]),
    "runtime": (_runtime, ["runtime.version"]),
    "target": (_target, ["target"]),
}


@pytest.mark.parametrize(("edit", "fields"), FIELD_CHANGES.values(), ids=FIELD_CHANGES.keys())
def test_each_field_changes_the_key(edit: Callable[[Spec], Any], fields: list[str]) -> None:
    spec = folder_spec()
    other = copy.deepcopy(spec)
    edit(other)
    assert key_of(other) != key_of(spec)
    assert [d["field"] for d in manifest_diff(build_manifest(spec), build_manifest(other))] == fields


SAME_KEY: dict[str, Callable[[Spec], Any]] = {
    "the dtype as torch writes it": _config("torch_dtype", "bfloat16"),
    "max_context_length = seq_len, written out": _config("max_context_length", 4096),
    "the batch sizes = batch_size, written out": lambda s: s["neuron_config"].update(
        ctx_batch_size=4, tkg_batch_size=4, max_batch_size=4),
    "is_continuous_batching's default, written out": _config("is_continuous_batching", False),
    "a sampling default, written out": _sampling("global_topk", 256),
    "temperature 1 and 1.0": _sampling("temperature", 1),
    "where the quantized checkpoint lay": _config("quantized_checkpoints_path", "/elsewhere/q.pt"),
    "skip_warmup (start-up only)": _config("skip_warmup", True),
    "a quantization type, while not quantized": _config("quantization_type", "per_channel_symmetric"),
    "the keys' order": lambda s: s.update(neuron_config=dict(reversed(list(s["neuron_config"].items())))),
}


@pytest.mark.parametrize("edit", SAME_KEY.values(), ids=SAME_KEY.keys())
def test_what_does_not_change_the_output_does_not_change_the_key(edit: Callable[[Spec], Any]) -> None:
    spec = folder_spec()
    edit(spec)
    assert key_of(spec) == GOLDEN_FOLDER_KEY


def test_documented_defaults_are_filled_in() -> None:
    assert canonical_neuron_config({}) == {
        "tp_degree": 1, "batch_size": 1, "seq_len": 128, "torch_dtype": "bfloat16", "enable_bucketing": False,
        "context_encoding_buckets": None, "token_generation_buckets": None, "is_continuous_batching": False,
        "on_device_sampling_config": None, "quantized": False, "max_context_length": 128, "ctx_batch_size": 1,
        "tkg_batch_size": 1, "max_batch_size": 1,
    }
    quantized = canonical_neuron_config({"quantized": True})
    assert (quantized["quantization_type"], quantized["quantization_dtype"]) == ("per_tensor_symmetric", "int8")


@pytest.mark.parametrize(("config", "field"), [
    ({"tp_degree": 0}, "neuron_config.tp_degree"), ({"tp_degree": "8"}, "neuron_config.tp_degree"),
    ({"batch_size": True}, "neuron_config.batch_size"), ({"enable_bucketing": "yes"}, "neuron_config.enable_bucketing"),
    ({"context_encoding_buckets": []}, "neuron_config.context_encoding_buckets"),
    ({"token_generation_buckets": [512, 0]}, "neuron_config.token_generation_buckets"),
    ({"torch_dtype": "int4"}, "neuron_config.torch_dtype"),
    ({"on_device_sampling_config": {"top_p": "high"}}, "neuron_config.on_device_sampling_config.top_p"),
    ({"rope_scaling": float("nan")}, "neuron_config.rope_scaling"),
    ({"Bad Name": 1}, "field name"),
])
def test_a_bad_value_is_refused_naming_the_field(config: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec, match=field.replace(".", r"\.")):
        canonical_neuron_config(config)
    spec = folder_spec()
    spec["neuron_config"] = config
    with pytest.raises(ValidationError, match="neuron_config"):
        CompileSpec.model_validate(spec)


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda s: s["compiler"].pop("nxd_inference_version"), "compiler.nxd_inference_version: required"),
    (lambda s: s.pop("neuron_config"), "neuron_config: required"),
    (lambda s: s["model"].update(format="torch-export"), "model.format hf-checkpoint: required"),
    (lambda s: s.update(inputs=[{"name": "input_ids", "shape": [4, 4096], "dtype": "int64"}]), "inputs:"),
    (lambda s: s.update(compiler={"name": "neuronx-cc", "version": "2.26.6360.0"}), "does not fit compiler"),
])
def test_a_folder_spec_is_whole_or_refused(edit: Callable[[Spec], Any], problem: str) -> None:
    spec = folder_spec()
    edit(spec)
    with pytest.raises(ValidationError, match=problem):
        CompileSpec.model_validate(spec)
