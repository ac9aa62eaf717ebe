"""The key manifest and cache key: every field that changes the output changes the key, nothing
else does, and a miss can be explained field by field."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

import neffcache.key as key_module
from neffcache.errors import InvalidFlags, InvalidSpec
from neffcache.key import (
    DEFAULT_CPU_ISA,
    KEY_VERSION,
    MANIFEST_FIELDS,
    aten_cpu_capability,
    build_manifest,
    cache_key,
    canonical_json,
    key_for_spec,
    manifest_diff,
)

Spec = dict[str, Any]


def neuron_spec() -> Spec:
    """A fully specified neuronx-cc spec, flags written the messy way a user would."""
    return {
        "model": {"format": "hlo", "digest": "sha256:" + "ab" * 32},
        "inputs": [
            {"name": "input_ids", "shape": [1, 128], "dtype": "int64"},
            {"name": "attention_mask", "shape": [1, 128], "dtype": "int64"},
        ],
        "target": "trn2",
        "compiler": {
            "name": "neuronx-cc",
            "version": "2.27.5334.0+7c6c5fd4",
            "flags": [
                "--framework", "XLA", "--target", "trn2", "-O1", "--model-type", "transformer",
                "-lnc", "2", "--auto-cast", "none", "--output", "/w/model.neff",
                "--tensorizer-options=--enable-ccop-compute-overlap",
            ],
        },
        "runtime": {"name": "neuron-runtime", "version": "2.34.10.0"},
        "namespace": "default",
        "allow_toolchain_mismatch": False,
    }


def inductor_spec() -> Spec:
    return {
        "model": {"format": "torch-export", "digest": "sha256:" + "cd" * 32},
        "inputs": [{"name": "x", "shape": [4, 64], "dtype": "float32"}],
        "target": "cpu",
        "compiler": {"name": "inductor", "version": "2.13.0", "flags": ["max_autotune=false"]},
        "runtime": {"name": "torch", "version": "2.13.0"},
        "namespace": "team-a",
    }


def key_of(spec: Spec) -> str:
    return key_for_spec(spec)[1]


def changed(spec: Spec, edit: Callable[[Spec], Any]) -> Spec:
    other = copy.deepcopy(spec)
    edit(other)
    return other


# --- golden key -------------------------------------------------------------------------------
# CHANGING EITHER LITERAL BELOW MEANS EVERY STORED ARTIFACT BECOMES UNREACHABLE: bump
# KEY_VERSION in neffcache/key.py whenever the manifest or its canonicalisation changes, then
# update these literals.
GOLDEN_NEURON_JSON = (
    '{"allow_toolchain_mismatch":false,"compiler":{"flags":["--auto-cast=none",'
    '"--logical-nc-config=2","--model-type=transformer","--optlevel=1",'
    '"--tensorizer-options=--enable-ccop-compute-overlap"],"name":"neuronx-cc",'
    '"version":"2.27.5334.0+7c6c5fd4"},"inputs":[{"dtype":"int64","name":"input_ids",'
    '"shape":[1,128]},{"dtype":"int64","name":"attention_mask","shape":[1,128]}],"isa":null,'
    '"key_version":1,"model":{"digest":"sha256:'
    "abababababababababababababababababababababababababababababababab"
    '","format":"hlo"},"namespace":"default","runtime":{"name":"neuron-runtime",'
    '"version":"2.34.10.0"},"target":"trn2"}'
)
GOLDEN_NEURON_KEY = "4139b72ea77456d8858a8653333aef2c8aee4619ed2e84d5734a9f9bf269a5ae"
GOLDEN_INDUCTOR_KEY = "c2265c6460cabc25dd769a503a0f8192d269ef9ae0a9ed4a19556e1615dcd8bd"


def test_golden_key() -> None:
    manifest, key = key_for_spec(neuron_spec())
    assert canonical_json(manifest).decode("utf-8") == GOLDEN_NEURON_JSON
    assert key == GOLDEN_NEURON_KEY
    assert key == hashlib.sha256(GOLDEN_NEURON_JSON.encode("utf-8")).hexdigest()


def test_golden_key_inductor() -> None:
    assert key_of(inductor_spec()) == GOLDEN_INDUCTOR_KEY


def test_manifest_layout() -> None:
    manifest = build_manifest(neuron_spec())
    assert list(manifest) == list(MANIFEST_FIELDS)
    assert manifest == {
        "key_version": 1,
        "namespace": "default",
        "model": {"format": "hlo", "digest": "sha256:" + "ab" * 32},
        "inputs": [
            {"name": "input_ids", "shape": [1, 128], "dtype": "int64"},
            {"name": "attention_mask", "shape": [1, 128], "dtype": "int64"},
        ],
        "target": "trn2",
        "isa": None,
        "compiler": {
            "name": "neuronx-cc",
            "version": "2.27.5334.0+7c6c5fd4",
            "flags": [
                "--auto-cast=none", "--logical-nc-config=2", "--model-type=transformer",
                "--optlevel=1", "--tensorizer-options=--enable-ccop-compute-overlap",
            ],
        },
        "runtime": {"name": "neuron-runtime", "version": "2.34.10.0"},
        "allow_toolchain_mismatch": False,
    }
    # plain JSON data: survives a round trip unchanged
    assert json.loads(canonical_json(manifest)) == manifest


def test_canonical_json_form() -> None:
    assert canonical_json({"b": [1, "é"], "a": None}) == '{"a":null,"b":[1,"é"]}'.encode()
    assert cache_key({"a": 1}) == hashlib.sha256(b'{"a":1}').hexdigest()
    with pytest.raises(ValueError):
        canonical_json({"a": float("nan")})


def test_key_is_deterministic_and_spec_is_not_mutated() -> None:
    spec = neuron_spec()
    before = copy.deepcopy(spec)
    assert key_of(spec) == key_of(spec) == GOLDEN_NEURON_KEY
    assert spec == before


# --- every manifest field changes the key -----------------------------------------------------
def _set(path: str, value: Any) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        *parents, last = path.split(".")
        node = spec
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


def _input(index: int, field: str, value: Any) -> Callable[[Spec], None]:
    def edit(spec: Spec) -> None:
        spec["inputs"][index][field] = value

    return edit


def _swap_inputs(spec: Spec) -> None:
    spec["inputs"].reverse()


def _retarget(spec: Spec) -> None:
    # drop the `--target trn2` flag too, which would otherwise (rightly) be refused
    spec["target"] = "trn3"
    flags = spec["compiler"]["flags"]
    spec["compiler"]["flags"] = [flag for flag in flags if flag not in ("--target", "trn2")]


# edit -> the manifest fields it must change (and nothing else)
FIELD_CHANGES: dict[str, tuple[Callable[[Spec], Any], list[str]]] = {
    "namespace": (_set("namespace", "team-b"), ["namespace"]),
    "model.format": (_set("model.format", "torch-export"), ["model.format"]),
    "model.digest": (_set("model.digest", "sha256:" + "ac" * 32), ["model.digest"]),
    "input name": (_input(0, "name", "ids"), ["inputs[0].name"]),
    "input shape": (_input(0, "shape", [1, 256]), ["inputs[0].shape"]),
    "input rank": (_input(0, "shape", [128]), ["inputs[0].shape"]),
    "input dtype": (_input(0, "dtype", "int32"), ["inputs[0].dtype"]),
    "input order": (_swap_inputs, ["inputs[0].name", "inputs[1].name"]),
    "input count": (lambda spec: spec["inputs"].pop(), ["inputs"]),
    "target": (_retarget, ["target"]),
    "compiler.version": (_set("compiler.version", "2.26.5334.0+7c6c5fd4"), ["compiler.version"]),
    "compiler.flags": (_set("compiler.flags", ["-O2"]), ["compiler.flags"]),
    "runtime.name": (_set("runtime.name", "aws-neuronx-runtime-lib"), ["runtime.name"]),
    "runtime.version": (_set("runtime.version", "2.33.0.0"), ["runtime.version"]),
    "allow_toolchain_mismatch": (
        _set("allow_toolchain_mismatch", True), ["allow_toolchain_mismatch"]
    ),
}


@pytest.mark.parametrize(("edit", "fields"), FIELD_CHANGES.values(), ids=FIELD_CHANGES.keys())
def test_each_field_changes_the_key(edit: Callable[[Spec], Any], fields: list[str]) -> None:
    spec = neuron_spec()
    other = changed(spec, edit)
    assert key_of(other) != key_of(spec)
    # and the change is in that field only, so the test proves what it claims
    diff = manifest_diff(build_manifest(spec), build_manifest(other))
    assert [entry["field"] for entry in diff] == fields


def test_isa_changes_the_key() -> None:
    spec = inductor_spec()
    levels = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"]
    keys = {
        key_of(changed(spec, _set("compiler.flags", [f"cpp.march={level}"])))
        for level in levels
    }
    assert len(keys) == len(levels)


def test_cuda_arch_changes_the_key() -> None:
    spec = changed(inductor_spec(), _set("target", "cuda"))
    sm80 = key_of(changed(spec, _set("compiler.flags", ["cuda.arch=sm_80"])))
    sm90 = key_of(changed(spec, _set("compiler.flags", ["cuda.arch=sm_90"])))
    assert sm80 != sm90


def test_compiler_name_changes_the_key() -> None:
    # Same flags list ([]), same target, only the compiler name differs. No real spec pairs
    # inductor with trn targets, so compare on the manifest, where the name is one field.
    manifest = build_manifest(inductor_spec())
    other = copy.deepcopy(manifest)
    other["compiler"]["name"] = "inductor-next"
    assert cache_key(other) != cache_key(manifest)


def test_inductor_target_changes_the_key() -> None:
    spec = changed(inductor_spec(), _set("compiler.flags", []))
    cuda = changed(spec, lambda s: (_set("target", "cuda")(s),
                                    _set("compiler.flags", ["cuda.arch=sm_90"])(s)))
    assert key_of(cuda) != key_of(spec)


def test_key_version_changes_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = key_of(neuron_spec())
    monkeypatch.setattr(key_module, "KEY_VERSION", KEY_VERSION + 1)
    manifest, after = key_for_spec(neuron_spec())
    assert manifest["key_version"] == KEY_VERSION + 1
    assert after != before


def test_missing_allow_toolchain_mismatch_means_false() -> None:
    spec = neuron_spec()
    del spec["allow_toolchain_mismatch"]
    manifest, key = key_for_spec(spec)
    assert manifest["allow_toolchain_mismatch"] is False
    assert key == GOLDEN_NEURON_KEY


# --- what does not change the key -------------------------------------------------------------
NEURON_BASE_FLAGS = ["-O1", "--model-type=transformer"]
DROPPED_FLAGS = {
    "--output": ["--output", "/tmp/elsewhere.neff"],
    "--output=": ["--output=/a/b.neff"],
    "--logfile": ["--logfile", "/tmp/log.txt"],
    "--logfile-verbose": ["--logfile-verbose=debug"],
    "--verbose": ["--verbose"],
    "--verbose value": ["--verbose", "debug"],
    "--verbose=": ["--verbose=INFO"],
    "--workdir": ["--workdir", "/tmp/w"],
    "--compile_workdir": ["--compile_workdir=/tmp/w"],
    "--compile-workdir": ["--compile-workdir", "/tmp/w"],
    "--cache_dir": ["--cache_dir=/var/tmp/neuron-compile-cache"],
    "--cache-dir": ["--cache-dir", "/c"],
    "--temp-dir": ["--temp-dir", "/t"],
    "--tmpdir": ["--tmpdir=/t"],
    "--retry_failed_compilation": ["--retry_failed_compilation"],
    "--framework XLA": ["--framework", "XLA"],
    "--framework=XLA": ["--framework=XLA"],
    "--target same": ["--target", "trn2"],
    "--target=same": ["--target=trn2"],
}


@pytest.mark.parametrize("extra", DROPPED_FLAGS.values(), ids=DROPPED_FLAGS.keys())
def test_dropped_flag_does_not_change_the_key(extra: list[str]) -> None:
    spec = changed(neuron_spec(), _set("compiler.flags", NEURON_BASE_FLAGS))
    base = key_of(spec)
    assert key_of(changed(spec, _set("compiler.flags", [*NEURON_BASE_FLAGS, *extra]))) == base
    assert key_of(changed(spec, _set("compiler.flags", [*extra, *NEURON_BASE_FLAGS]))) == base


@pytest.mark.parametrize(
    "extra", [["trace.enabled=True"], ["trace.debug_dir=/tmp/d"], ["compile_threads=64"]]
)
def test_dropped_inductor_option_does_not_change_the_key(extra: list[str]) -> None:
    spec = inductor_spec()
    flags = spec["compiler"]["flags"]
    assert key_of(changed(spec, _set("compiler.flags", [*flags, *extra]))) == key_of(spec)


@pytest.mark.parametrize(
    "spelling",
    [["-O1"], ["-O", "1"], ["-O=1"], ["--optlevel", "1"], ["--optlevel=1"], ["-O1", "-O1"]],
)
def test_equivalent_optlevel_spellings_share_a_key(spelling: list[str]) -> None:
    spec = changed(neuron_spec(), _set("compiler.flags", ["--optlevel=1"]))
    assert key_of(changed(spec, _set("compiler.flags", spelling))) == key_of(spec)


@pytest.mark.parametrize(
    "spelling", [["-lnc", "2"], ["-lnc=2"], ["--lnc", "2"], ["--logical-nc-config", "2"]]
)
def test_equivalent_lnc_spellings_share_a_key(spelling: list[str]) -> None:
    spec = changed(neuron_spec(), _set("compiler.flags", ["--logical-nc-config=2"]))
    assert key_of(changed(spec, _set("compiler.flags", spelling))) == key_of(spec)


def test_inductor_equivalent_spellings_share_a_key() -> None:
    spec = inductor_spec()
    for flags in (["max_autotune = False"], ["max_autotune=FALSE"], ["max_autotune=false"] * 2):
        assert key_of(changed(spec, _set("compiler.flags", flags))) == GOLDEN_INDUCTOR_KEY


def test_known_flag_order_does_not_matter() -> None:
    flags = ["-O1", "--model-type", "transformer", "-lnc", "2", "--auto-cast=none"]
    spec = neuron_spec()
    forward = key_of(changed(spec, _set("compiler.flags", flags)))
    backward = key_of(
        changed(spec, _set("compiler.flags", ["--auto-cast=none", "-lnc", "2",
                                              "--model-type", "transformer", "-O1"]))
    )
    assert forward == backward


def test_inductor_flag_order_does_not_matter() -> None:
    spec = inductor_spec()
    one = changed(spec, _set("compiler.flags", ["a=1", "b=2"]))
    two = changed(spec, _set("compiler.flags", ["b=2", "a=1"]))
    assert key_of(one) == key_of(two)


def test_unknown_flag_order_matters() -> None:
    spec = neuron_spec()
    one = changed(spec, _set("compiler.flags", ["--foo", "bar", "--baz"]))
    two = changed(spec, _set("compiler.flags", ["--baz", "--foo", "bar"]))
    assert build_manifest(one)["compiler"]["flags"] == ["--foo", "bar", "--baz"]
    assert key_of(one) != key_of(two)


def test_unknown_flag_position_among_known_flags_does_not_matter() -> None:
    spec = neuron_spec()
    one = changed(spec, _set("compiler.flags", ["--foo", "bar", "-O1"]))
    two = changed(spec, _set("compiler.flags", ["-O1", "--foo", "bar"]))
    assert key_of(one) == key_of(two)


# --- isa --------------------------------------------------------------------------------------
def test_default_cpu_isa_filled_in_and_recorded() -> None:
    manifest, key = key_for_spec(inductor_spec())
    assert manifest["isa"] == DEFAULT_CPU_ISA == "x86-64-v3"
    explicit = changed(
        inductor_spec(), _set("compiler.flags", ["max_autotune=false", "cpp.march=x86-64-v3"])
    )
    explicit_manifest, explicit_key = key_for_spec(explicit)
    # recorded as isa, not kept as a flag, so explicit and implicit default share a key
    assert explicit_manifest["compiler"]["flags"] == ["max_autotune=False"]
    assert explicit_key == key


def test_march_recorded_as_isa() -> None:
    spec = changed(inductor_spec(), _set("compiler.flags", ["cpp.march=x86-64-v4"]))
    manifest = build_manifest(spec)
    assert manifest["isa"] == "x86-64-v4"
    assert manifest["compiler"]["flags"] == []


def test_cuda_requires_cuda_arch() -> None:
    spec = changed(inductor_spec(), _set("target", "cuda"))
    with pytest.raises(InvalidFlags, match="cuda.arch"):
        build_manifest(spec)
    spec["compiler"]["flags"].append("cuda.arch=sm_90")
    manifest = build_manifest(spec)
    assert manifest["isa"] == "sm_90"
    assert manifest["compiler"]["flags"] == ["max_autotune=False"]


def test_neuron_targets_have_no_isa() -> None:
    assert build_manifest(neuron_spec())["isa"] is None


@pytest.mark.parametrize(
    ("isa", "capability"),
    [("x86-64", "default"), ("x86-64-v2", "default"), ("x86-64-v3", "avx2"),
     ("x86-64-v4", "avx512")],
)
def test_aten_cpu_capability(isa: str, capability: str) -> None:
    assert aten_cpu_capability(isa) == capability


def test_aten_cpu_capability_refuses_non_cpu_isa() -> None:
    with pytest.raises(ValueError, match="sm_90"):
        aten_cpu_capability("sm_90")


# --- refusals surface from build_manifest -----------------------------------------------------
def test_bad_flags_refused_by_build_manifest() -> None:
    spec = changed(neuron_spec(), _set("compiler.flags", ["--target=trn1"]))
    with pytest.raises(InvalidFlags) as caught:
        build_manifest(spec)
    assert caught.value.detail == "compiler.flags: --target=trn1 disagrees with target trn2"


def test_missing_field_refused() -> None:
    spec = neuron_spec()
    del spec["runtime"]["version"]
    with pytest.raises(InvalidSpec, match="runtime.version"):
        build_manifest(spec)


# --- manifest_diff ----------------------------------------------------------------------------
def test_diff_of_equal_manifests_is_empty() -> None:
    assert manifest_diff(build_manifest(neuron_spec()), build_manifest(neuron_spec())) == []


def test_diff_names_nested_fields() -> None:
    wanted = build_manifest(neuron_spec())
    found = build_manifest(
        changed(neuron_spec(), lambda s: (_set("compiler.version", "2.26.1.0")(s),
                                          _set("runtime.version", "2.33.0.0")(s),
                                          _set("model.digest", "sha256:" + "00" * 32)(s)))
    )
    assert manifest_diff(wanted, found) == [
        {"field": "model.digest", "wanted": "sha256:" + "ab" * 32, "found": "sha256:" + "00" * 32},
        {"field": "compiler.version", "wanted": "2.27.5334.0+7c6c5fd4", "found": "2.26.1.0"},
        {"field": "runtime.version", "wanted": "2.34.10.0", "found": "2.33.0.0"},
    ]


def test_diff_follows_manifest_order() -> None:
    wanted = build_manifest(neuron_spec())
    found = copy.deepcopy(wanted)
    found["allow_toolchain_mismatch"] = True
    found["compiler"]["flags"] = ["--optlevel=3"]
    found["target"] = "trn3"
    found["namespace"] = "other"
    found["key_version"] = 2
    fields = [entry["field"] for entry in manifest_diff(wanted, found)]
    assert fields == ["key_version", "namespace", "target", "compiler.flags",
                      "allow_toolchain_mismatch"]


def test_diff_compares_flags_as_a_whole() -> None:
    wanted = build_manifest(neuron_spec())
    found = copy.deepcopy(wanted)
    found["compiler"]["flags"] = [*wanted["compiler"]["flags"], "--enable-saturate-infinity"]
    assert manifest_diff(wanted, found) == [
        {"field": "compiler.flags", "wanted": wanted["compiler"]["flags"],
         "found": found["compiler"]["flags"]}
    ]


def test_diff_isa() -> None:
    wanted = build_manifest(inductor_spec())
    found = build_manifest(
        changed(inductor_spec(), _set("compiler.flags", ["max_autotune=false",
                                                         "cpp.march=x86-64-v4"]))
    )
    assert manifest_diff(wanted, found) == [
        {"field": "isa", "wanted": "x86-64-v3", "found": "x86-64-v4"}
    ]


def test_diff_inputs_per_input_when_same_length() -> None:
    wanted = build_manifest(neuron_spec())
    found = build_manifest(changed(neuron_spec(), _input(1, "shape", [1, 256])))
    assert manifest_diff(wanted, found) == [
        {"field": "inputs[1].shape", "wanted": [1, 128], "found": [1, 256]}
    ]


def test_diff_inputs_swapped_order() -> None:
    wanted = build_manifest(neuron_spec())
    found = build_manifest(changed(neuron_spec(), _swap_inputs))
    assert manifest_diff(wanted, found) == [
        {"field": "inputs[0].name", "wanted": "input_ids", "found": "attention_mask"},
        {"field": "inputs[1].name", "wanted": "attention_mask", "found": "input_ids"},
    ]


def test_diff_inputs_whole_when_lengths_differ() -> None:
    wanted = build_manifest(neuron_spec())
    found = build_manifest(changed(neuron_spec(), lambda s: s["inputs"].pop()))
    assert manifest_diff(wanted, found) == [
        {"field": "inputs", "wanted": wanted["inputs"], "found": found["inputs"]}
    ]


def test_diff_reports_fields_missing_on_one_side() -> None:
    wanted = build_manifest(neuron_spec())
    # e.g. a manifest written under another key_version
    found = copy.deepcopy(wanted)
    del found["runtime"]["version"]
    found["extra"] = "x"
    assert manifest_diff(wanted, found) == [
        {"field": "runtime.version", "wanted": "2.34.10.0", "found": None},
        {"field": "extra", "wanted": None, "found": "x"},
    ]
