"""neffcache.key.spec_for_manifest, build_manifest's inverse: the spec it gives back for an
artifact's manifest has that artifact's own key, for every backend (the property POST
/v1/prewarm relies on: re-keyed for the same toolchain, an artifact is its own hit)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from neffcache.errors import InvalidSpec
from neffcache.key import build_manifest, cache_key, key_for_spec, spec_for_manifest
from neffcache.spec import CompileSpec
from neffcache.toolchain import CPU_ISA_LEVELS, NEURON_TARGETS
from tests.unit.neffcache.test_key import GOLDEN_NEURON_JSON, GOLDEN_NEURON_KEY
from tests.unit.neffcache.test_key_neuron_config import GOLDEN_FOLDER_JSON, GOLDEN_FOLDER_KEY
from tests.unit.neffcache.test_key_torch_neuronx import GOLDEN_TORCH_NEURONX_JSON, GOLDEN_TORCH_NEURONX_KEY

Spec = dict[str, Any]
GOLDEN_INDUCTOR_CUDA_MANIFEST: Spec = {
    "allow_toolchain_mismatch": False, "isa": "sm_90", "key_version": 1, "namespace": "team-a", "target": "cuda",
    "compiler": {"name": "inductor", "version": "2.13.0", "flags": ["max_autotune=True"]},
    "inputs": [{"name": "x", "shape": [4, 64], "dtype": "float32"}],
    "model": {"format": "torch-export", "digest": "sha256:" + "cd" * 32},
    "runtime": {"name": "torch", "version": "2.13.0"},
}


def spec_key(spec: Spec) -> str:
    """The key the service gives a spec: validated (defaults filled in), dumped, hashed."""
    return key_for_spec(CompileSpec.model_validate(spec).model_dump(mode="json"))[1]


# Stored manifests as the database holds them (the golden keys of each backend's key tests).
@pytest.mark.parametrize("manifest, key", [
    (json.loads(GOLDEN_NEURON_JSON), GOLDEN_NEURON_KEY),
    (json.loads(GOLDEN_TORCH_NEURONX_JSON), GOLDEN_TORCH_NEURONX_KEY),
    (json.loads(GOLDEN_FOLDER_JSON), GOLDEN_FOLDER_KEY),
    (GOLDEN_INDUCTOR_CUDA_MANIFEST, cache_key(GOLDEN_INDUCTOR_CUDA_MANIFEST)),
], ids=["neuronx-cc", "torch-neuronx", "nxd-inference-folder", "inductor-cuda"])
def test_the_spec_of_a_stored_manifest_has_its_key(manifest: Spec, key: str) -> None:
    assert cache_key(manifest) == key
    spec = spec_for_manifest(manifest)
    assert spec_key(spec) == key
    assert build_manifest(CompileSpec.model_validate(spec).model_dump(mode="json")) == manifest


def test_inductor_isa_goes_back_into_the_flags() -> None:
    cpu = {**GOLDEN_INDUCTOR_CUDA_MANIFEST, "target": "cpu", "isa": "x86-64-v4"}
    assert spec_for_manifest(cpu)["compiler"]["flags"] == ["max_autotune=True", "cpp.march=x86-64-v4"]
    assert spec_for_manifest(GOLDEN_INDUCTOR_CUDA_MANIFEST)["compiler"]["flags"] == [
        "max_autotune=True", "cuda.arch=sm_90"]


def test_the_spec_is_a_copy() -> None:
    manifest = json.loads(GOLDEN_NEURON_JSON)
    spec = spec_for_manifest(manifest)
    spec["compiler"]["flags"].append("--optlevel=3")
    spec["inputs"][0]["shape"].append(7)
    assert manifest == json.loads(GOLDEN_NEURON_JSON)


# --- the property, over manifests of every backend -----------------------------------------------
versions = st.from_regex(r"\A2\.[0-9]{1,2}\.[0-9]{1,4}(\.[0-9]{1,3})?(\+[0-9a-f]{6,9})?\Z")
namespaces = st.sampled_from(["default", "team-a", "search.prod"])
inputs = st.lists(
    st.fixed_dictionaries({
        "shape": st.lists(st.integers(1, 4096), min_size=1, max_size=4),
        "dtype": st.sampled_from(["float32", "bfloat16", "int64", "bool"]),
    }),
    min_size=1, max_size=3,
).map(lambda items: [{"name": f"in_{i}", **item} for i, item in enumerate(items)])
# Each a group of argv tokens, spelled as users write them: aliases, split values, dropped flags, unknown ones.
NEURON_FLAGS = [["-O1"], ["-O", "3"], ["--optlevel=2"], ["--auto-cast", "none"], ["--auto-cast=matmult"],
                ["--model-type=transformer"], ["--verbose=info"], ["--logfile", "/w/log.txt"],
                ["--framework", "XLA"], ["--enable-saturate-infinity"], ["--tensorizer-options=--no-fuse"],
                ["-lnc", "2"], ["--logical-nc-config=1"]]
INDUCTOR_FLAGS = ["max_autotune=true", "max_autotune=False", "trace.enabled=1", "compile_threads=4",
                  "epilogue_fusion=0", "triton.cudagraphs=True"]


def flag_groups(groups: list[list[str]]) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(groups), max_size=4, unique_by=lambda g: g[0]).map(
        lambda chosen: [token for group in chosen for token in group])


@st.composite
def neuronx_cc_specs(draw: st.DrawFn) -> Spec:
    return {
        "model": {"format": "hlo", "digest": "sha256:" + draw(st.text("0123456789abcdef", min_size=64, max_size=64))},
        "inputs": draw(inputs), "target": draw(st.sampled_from(NEURON_TARGETS)), "namespace": draw(namespaces),
        "compiler": {"name": "neuronx-cc", "version": draw(versions), "flags": draw(flag_groups(NEURON_FLAGS))},
        "runtime": {"name": "neuron-runtime", "version": draw(versions)},
        "allow_toolchain_mismatch": draw(st.booleans()),
    }


@st.composite
def inductor_specs(draw: st.DrawFn) -> Spec:
    target = draw(st.sampled_from(["cpu", "cuda"]))
    flags = draw(st.lists(st.sampled_from(INDUCTOR_FLAGS), max_size=3, unique_by=lambda f: f.split("=")[0]))
    if target == "cuda":
        flags.append(draw(st.sampled_from(["cuda.arch=sm_90", "cuda.arch=80", "cuda.arch=sm_100"])))
    elif draw(st.booleans()):  # else the default level
        flags.append(f"cpp.march={draw(st.sampled_from(CPU_ISA_LEVELS))}")
    version = draw(versions)
    return {
        "model": {"format": "torch-export", "digest": "sha256:" + "cd" * 32},
        "inputs": draw(inputs), "target": target, "namespace": draw(namespaces),
        "compiler": {"name": "inductor", "version": version, "flags": draw(st.permutations(flags))},
        "runtime": {"name": "torch", "version": version},
    }


@st.composite
def torch_neuronx_specs(draw: st.DrawFn) -> Spec:
    spec = draw(neuronx_cc_specs())
    spec["model"]["format"] = draw(st.sampled_from(["torch-export", "torchscript"]))
    spec["compiler"].update(name="torch-neuronx", torch_version=draw(versions), neuronx_cc_version=draw(versions))
    inline = draw(st.sampled_from([None, True, False]))
    if inline is not None:
        spec["compiler"]["inline_weights_to_neff"] = inline
    if draw(st.booleans()):  # an NxD Inference folder
        spec["model"]["format"] = "hf-checkpoint"
        spec["inputs"] = []
        spec["compiler"]["nxd_inference_version"] = draw(versions)
        spec["neuron_config"] = draw(st.fixed_dictionaries({}, optional={
            "tp_degree": st.sampled_from([1, 8, 32]), "batch_size": st.integers(1, 8), "seq_len": st.integers(1, 8192),
            "torch_dtype": st.sampled_from(["bfloat16", "torch.float16"]), "enable_bucketing": st.booleans(),
            "on_device_sampling_config": st.sampled_from([None, {}, {"top_k": 5, "top_p": 1}]),
            "quantized": st.booleans(), "logical_nc_config": st.sampled_from([1, 2]), "skip_warmup": st.booleans(),
        }))
    return spec


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(neuronx_cc_specs(), inductor_specs(), torch_neuronx_specs()))
def test_the_spec_of_any_manifest_has_the_manifests_key(spec: Spec) -> None:
    try:
        manifest, key = key_for_spec(CompileSpec.model_validate(spec).model_dump(mode="json"))
    except InvalidSpec:  # flags this target refuses (-lnc on trn1): no artifact has such a manifest
        assume(False)
        raise
    again = spec_for_manifest(manifest)
    assert spec_key(again) == key
    # And the spec is a fixed point: its manifest's spec is itself.
    assert spec_for_manifest(build_manifest(CompileSpec.model_validate(again).model_dump(mode="json"))) == again
