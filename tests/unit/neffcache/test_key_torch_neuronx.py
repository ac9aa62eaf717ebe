"""The torch-neuronx key: its own fields (torch, neuronx-cc, inline_weights_to_neff) each change
the key, its flags follow neuronx-cc's rules, and no other compiler's key moves."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from neffcache.errors import InvalidSpec
from neffcache.key import build_manifest, canonical_json, key_for_spec, manifest_diff
from neffcache.spec import CompileSpec

Spec = dict[str, Any]


def torch_neuronx_spec() -> Spec:
    """A fully specified torch-neuronx spec (the toolchain of SDK 2.31.1), flags written loosely."""
    return {
        "model": {"format": "torch-export", "digest": "sha256:" + "ef" * 32},
        "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64"}],
        "target": "inf2",
        "compiler": {
            "name": "torch-neuronx",
            "version": "2.9.0.2.15.32035",
            "flags": ["-O2", "--auto-cast", "none", "--logfile", "/w/log.txt", "--verbose=info"],
            "torch_version": "2.9.0",
            "neuronx_cc_version": "2.26.6360.0",
        },
        "runtime": {"name": "neuron-runtime", "version": "2.33.10.0"},
        "namespace": "default",
    }


# CHANGING EITHER LITERAL MEANS EVERY STORED torch-neuronx ARTIFACT BECOMES UNREACHABLE (see
# the golden keys in test_key.py).
GOLDEN_TORCH_NEURONX_JSON = (
    '{"allow_toolchain_mismatch":false,"compiler":{"flags":["--auto-cast=none","--optlevel=2"],'
    '"inline_weights_to_neff":true,"name":"torch-neuronx","neuronx_cc_version":"2.26.6360.0",'
    '"torch_version":"2.9.0","version":"2.9.0.2.15.32035"},"inputs":[{"dtype":"int64",'
    '"name":"input_ids","shape":[1,128]}],"isa":null,"key_version":1,"model":{"digest":"sha256:'
    "efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef"
    '","format":"torch-export"},"namespace":"default","runtime":{"name":"neuron-runtime",'
    '"version":"2.33.10.0"},"target":"inf2"}'
)
GOLDEN_TORCH_NEURONX_KEY = "3e734a6888729a615e7b38772a64ecea79d8234b9a2810c7f71802dfb463c3f2"


def key_of(spec: Spec) -> str:
    return key_for_spec(spec)[1]


def test_golden_key_torch_neuronx() -> None:
    manifest, key = key_for_spec(torch_neuronx_spec())
    assert canonical_json(manifest).decode("utf-8") == GOLDEN_TORCH_NEURONX_JSON
    assert key == GOLDEN_TORCH_NEURONX_KEY == hashlib.sha256(GOLDEN_TORCH_NEURONX_JSON.encode()).hexdigest()


def test_the_schema_and_the_key_agree() -> None:
    """The spec as the service dumps it after validation has the same key."""
    dumped = CompileSpec.model_validate(torch_neuronx_spec()).model_dump(mode="json")
    assert key_of(dumped) == GOLDEN_TORCH_NEURONX_KEY


def _set(path: str, value: Any) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


FIELD_CHANGES: dict[str, tuple[Callable[[Spec], Any], list[str]]] = {
    "compiler.version": (_set("compiler.version", "2.9.0.2.14.27725"), ["compiler.version"]),
    "compiler.torch_version": (_set("compiler.torch_version", "2.9.1"), ["compiler.torch_version"]),
    "compiler.neuronx_cc_version": (_set("compiler.neuronx_cc_version", "2.25.3371.0"),
                                    ["compiler.neuronx_cc_version"]),
    "compiler.inline_weights_to_neff": (_set("compiler.inline_weights_to_neff", False),
                                        ["compiler.inline_weights_to_neff"]),
    "compiler.flags": (_set("compiler.flags", ["-O3"]), ["compiler.flags"]),
    "model.format": (_set("model.format", "torchscript"), ["model.format"]),
    "runtime.version": (_set("runtime.version", "2.32.31.0"), ["runtime.version"]),
    "target": (_set("target", "trn2"), ["target"]),
}


@pytest.mark.parametrize(("edit", "fields"), FIELD_CHANGES.values(), ids=FIELD_CHANGES.keys())
def test_each_field_changes_the_key(edit: Callable[[Spec], Any], fields: list[str]) -> None:
    spec = torch_neuronx_spec()
    other = copy.deepcopy(spec)
    edit(other)
    assert key_of(other) != key_of(spec)
    assert [d["field"] for d in manifest_diff(build_manifest(spec), build_manifest(other))] == fields


def test_inline_weights_to_neff_default_is_explicit() -> None:
    spec = torch_neuronx_spec()
    spec["compiler"]["inline_weights_to_neff"] = True  # torch_neuronx.trace's documented default
    assert key_of(spec) == GOLDEN_TORCH_NEURONX_KEY


@pytest.mark.parametrize("extra", [["--workdir", "/tmp/x"], ["--output", "o.neff"], ["--verbose", "debug"],
                                   ["--cache_dir=/var/tmp/c"]])
def test_options_that_do_not_change_the_output_are_dropped(extra: list[str]) -> None:
    spec = torch_neuronx_spec()
    spec["compiler"]["flags"] += extra
    assert key_of(spec) == GOLDEN_TORCH_NEURONX_KEY


def test_flags_are_neuronx_cc_compiler_args() -> None:
    spec = torch_neuronx_spec()
    spec["compiler"]["flags"] = ["--optlevel=2", "--auto-cast=none"]
    assert key_of(spec) == GOLDEN_TORCH_NEURONX_KEY
    neuron = copy.deepcopy(spec)
    neuron["compiler"] = {"name": "neuronx-cc", "version": "2.26.6360.0", "flags": ["--auto-cast", "none", "-O2"]}
    assert build_manifest(neuron)["compiler"]["flags"] == build_manifest(spec)["compiler"]["flags"]


@pytest.mark.parametrize("field", ["torch_version", "neuronx_cc_version"])
def test_a_missing_version_is_refused(field: str) -> None:
    spec = torch_neuronx_spec()
    del spec["compiler"][field]
    with pytest.raises(InvalidSpec, match=f"compiler.{field}: missing"):
        build_manifest(spec)


def test_other_compilers_have_none_of_its_fields() -> None:
    spec = torch_neuronx_spec()
    spec["model"]["format"] = "hlo"
    spec["compiler"] = {"name": "neuronx-cc", "version": "2.26.6360.0", "flags": []}
    assert set(build_manifest(spec)["compiler"]) == {"name", "version", "flags"}
    dumped = CompileSpec.model_validate(spec).model_dump(mode="json")
    assert set(dumped["compiler"]) == {"name", "version", "flags"}
