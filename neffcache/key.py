"""The key manifest and the cache key.

The manifest is the canonical, fully explicit form of a compile spec: every field that changes
the compiled output, and nothing that does not. The cache key is the sha256 of its canonical
JSON. The manifest is stored beside each artifact so that a miss can be explained field by field
(`manifest_diff`). Pure: no I/O, standard library only.

Changing what goes into the manifest, or how a field is canonicalised, changes keys: bump
KEY_VERSION when doing so, so that old and new keys can never be confused.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from neffcache.errors import InvalidSpec
from neffcache.flags import canonical_flags_and_isa, isa_flags
from neffcache.toolchain import CPU_ISA_LEVELS, DEFAULT_CPU_ISA, TORCH_NEURONX_PACKAGE

__all__ = [
    "DEFAULT_CPU_ISA",
    "KEY_VERSION",
    "MANIFEST_FIELDS",
    "aten_cpu_capability",
    "build_manifest",
    "cache_key",
    "canonical_neuron_config",
    "canonical_json",
    "key_for_spec",
    "manifest_diff",
    "spec_for_manifest",
]

KEY_VERSION = 1

# The manifest's fields in their documented order; manifest_diff reports in this order.
MANIFEST_FIELDS: tuple[str, ...] = (
    "key_version",
    "namespace",
    "model",
    "inputs",
    "target",
    "isa",
    "compiler",
    "runtime",
    "allow_toolchain_mismatch",
)
# torch-neuronx's compiler object also has these (and only its manifests have them, so the keys of
# the other compilers are what they were): the versions its TorchScript module and NEFFs depend
# on besides torch-neuronx's own, and the torch_neuronx.trace option that changes the output.
TORCH_NEURONX_COMPILER_FIELDS: tuple[str, ...] = ("torch_version", "neuronx_cc_version", "inline_weights_to_neff")
# torch_neuronx.trace's documented default: an absent option and an explicit default share a key.
INLINE_WEIGHTS_TO_NEFF_DEFAULT = True
# A spec with a `neuron_config` (an NxD Inference compiled-artifact folder, published with
# `neffcache push --dir`) adds NxD Inference's version to the compiler object and the canonical
# neuron config (canonical_neuron_config) to the manifest; specs without one hash as before.
NXD_INFERENCE_COMPILER_FIELD = "nxd_inference_version"
# NxD Inference NeuronConfig fields that change the compiled output, with the defaults its
# documentation gives, so that an absent field and its documented default share a key. Fields
# derived from another when absent (max_context_length from seq_len, the per-phase batch sizes
# from batch_size) are in NEURON_CONFIG_DERIVED. Any other field is kept in the key as given: an
# option this module does not know may well change the graph.
NEURON_CONFIG_DEFAULTS: dict[str, Any] = {
    "tp_degree": 1,
    "batch_size": 1,
    "seq_len": 128,
    "torch_dtype": "bfloat16",
    "enable_bucketing": False,
    "context_encoding_buckets": None,  # None: NxD Inference derives them (with enable_bucketing)
    "token_generation_buckets": None,
    "is_continuous_batching": False,
    "on_device_sampling_config": None,  # None: sampling runs on the host, not in the graph
    "quantized": False,
}
NEURON_CONFIG_DERIVED: dict[str, str] = {
    "max_context_length": "seq_len",
    "ctx_batch_size": "batch_size",
    "tkg_batch_size": "batch_size",
    "max_batch_size": "batch_size",
}
# OnDeviceSamplingConfig's documented defaults: sampling parameters compiled into the graph.
ON_DEVICE_SAMPLING_DEFAULTS: dict[str, Any] = {
    "do_sample": False, "top_k": 1, "top_p": 1.0, "temperature": 1.0, "dynamic": False,
    "deterministic": False, "global_topk": 256,
}
# Only with quantized: true (they mean nothing otherwise, so they do not split the key then).
QUANTIZATION_DEFAULTS: dict[str, Any] = {"quantization_type": "per_tensor_symmetric", "quantization_dtype": "int8"}
# Recorded in the folder's own neuron_config.json, never in the key: where a file lay on the
# compiling host, and start-up behaviour of the loading process.
NEURON_CONFIG_DROPPED: frozenset[str] = frozenset({"quantized_checkpoints_path", "skip_warmup"})
# logical_nc_config has no default here: NxD Inference's depends on the instance (trn2: 2), so it is
# kept as given, and absent is its own key.
_POSITIVE_INTS = ("tp_degree", "batch_size", "seq_len", *NEURON_CONFIG_DERIVED)
_BOOLS = ("enable_bucketing", "is_continuous_batching", "quantized")
_TORCH_DTYPES = ("bfloat16", "float16", "float32")
_NEURON_CONFIG_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SUBFIELDS: dict[str, tuple[str, ...]] = {
    "model": ("format", "digest"),
    "compiler": ("name", "version", "flags", *TORCH_NEURONX_COMPILER_FIELDS, NXD_INFERENCE_COMPILER_FIELD),
    "runtime": ("name", "version"),
    "neuron_config": (*NEURON_CONFIG_DEFAULTS, *NEURON_CONFIG_DERIVED, *QUANTIZATION_DEFAULTS),
}
_INPUT_FIELDS: tuple[str, ...] = ("name", "shape", "dtype")

# ISA level -> the ATEN_CPU_CAPABILITY a worker sets so that inductor's vectorised kernels use
# no instruction above that level (v2 adds no vector width over baseline, hence "default").
_ATEN_CPU_CAPABILITY: dict[str, str] = {
    "x86-64": "default",
    "x86-64-v2": "default",
    "x86-64-v3": "avx2",
    "x86-64-v4": "avx512",
}
assert set(_ATEN_CPU_CAPABILITY) == set(CPU_ISA_LEVELS)


def aten_cpu_capability(isa: str) -> str:
    """ATEN_CPU_CAPABILITY value for a CPU ISA level ("x86-64-v3" -> "avx2")."""
    try:
        return _ATEN_CPU_CAPABILITY[isa]
    except KeyError:
        raise ValueError(f"not a CPU ISA level: {isa!r}") from None


def canonical_json(obj: Any) -> bytes:
    """The one byte form hashed into a key: sorted keys, no spaces, UTF-8."""
    # allow_nan=False: NaN/Infinity are not JSON, and nothing in a manifest is a float anyway.
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def cache_key(manifest: Mapping[str, Any]) -> str:
    """sha256 hex of the manifest's canonical JSON."""
    return hashlib.sha256(canonical_json(manifest)).hexdigest()


def _field(spec: Mapping[str, Any], path: str) -> Any:
    value: Any = spec
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            raise InvalidSpec(f"{path}: missing")
        value = value[part]
    return value


def build_manifest(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The key manifest of a schema-validated spec whose versions are resolved.

    Raises InvalidFlags for bad compiler flags, InvalidSpec for a missing field.
    """
    compiler_name = _field(spec, "compiler.name")
    target = _field(spec, "target")
    isa, flags = canonical_flags_and_isa(compiler_name, _field(spec, "compiler.flags"), target)
    inputs = _field(spec, "inputs")
    return {
        # Read at call time, so a test can patch it.
        "key_version": KEY_VERSION,
        # A tenancy partition: the same build in two namespaces is two artifacts on purpose.
        "namespace": _field(spec, "namespace"),
        "model": {"format": _field(spec, "model.format"), "digest": _field(spec, "model.digest")},
        "inputs": [
            {
                "name": item["name"],
                "shape": [int(dim) for dim in item["shape"]],
                "dtype": item["dtype"],
            }
            for item in inputs
        ],
        "target": target,
        "isa": isa,
        "compiler": {
            "name": compiler_name,
            "version": _field(spec, "compiler.version"),
            "flags": flags,
            **(_torch_neuronx_fields(spec) if compiler_name == TORCH_NEURONX_PACKAGE else {}),
            **(_nxd_inference_fields(spec) if spec.get("neuron_config") is not None else {}),
        },
        "runtime": {
            "name": _field(spec, "runtime.name"),
            "version": _field(spec, "runtime.version"),
        },
        # Always present (false when absent from the spec) so every manifest has one layout.
        "allow_toolchain_mismatch": bool(spec.get("allow_toolchain_mismatch", False)),
        **({"neuron_config": canonical_neuron_config(spec["neuron_config"])}
           if spec.get("neuron_config") is not None else {}),
    }


def spec_for_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The compile spec whose manifest `manifest` is: build_manifest's inverse, so that the spec's
    key is the manifest's own (for a manifest of this KEY_VERSION). Everything the manifest holds
    goes back where a spec has it: the flags as canonicalised (canonical flags are a fixed point of
    the rules), inductor's `isa` as the `cpp.march` / `cuda.arch` flag it came from, torch-neuronx's
    and NxD Inference's versions, the canonical neuron config, allow_toolchain_mismatch. With other
    versions put in, it is the same build for another toolchain (POST /v1/prewarm)."""
    compiler = manifest["compiler"]
    target = manifest["target"]
    extra = (*TORCH_NEURONX_COMPILER_FIELDS, NXD_INFERENCE_COMPILER_FIELD)
    spec: dict[str, Any] = {
        "namespace": manifest["namespace"],
        "model": {"format": manifest["model"]["format"], "digest": manifest["model"]["digest"]},
        "inputs": [{"name": item["name"], "shape": list(item["shape"]), "dtype": item["dtype"]}
                   for item in manifest["inputs"]],
        "target": target,
        "compiler": {
            "name": compiler["name"],
            "version": compiler["version"],
            "flags": [*compiler["flags"], *isa_flags(compiler["name"], target, manifest.get("isa"))],
            **{name: compiler[name] for name in extra if name in compiler},
        },
        "runtime": {"name": manifest["runtime"]["name"], "version": manifest["runtime"]["version"]},
        "allow_toolchain_mismatch": bool(manifest.get("allow_toolchain_mismatch", False)),
    }
    if manifest.get("neuron_config") is not None:
        spec["neuron_config"] = dict(manifest["neuron_config"])
    return spec


def _nxd_inference_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A folder spec's compiler object also names the NxD Inference that compiled it."""
    version = _field(spec, "compiler").get(NXD_INFERENCE_COMPILER_FIELD)
    if not isinstance(version, str) or not version:
        raise InvalidSpec(f"compiler.{NXD_INFERENCE_COMPILER_FIELD}: missing (a spec with a neuron_config needs it)")
    return {NXD_INFERENCE_COMPILER_FIELD: version}


def canonical_neuron_config(given: Any) -> dict[str, Any]:
    """An NxD Inference neuron config as the key holds it: documented defaults filled in (a
    field left out and its default share a key), derived fields made explicit, the quantization
    fields only when quantized, fields that do not change the output dropped, every other field
    kept as given. canonical_json sorts the keys. InvalidSpec names a field that is not valid."""
    if not isinstance(given, Mapping):
        raise InvalidSpec("neuron_config: must be an object")
    for name, value in given.items():
        if not isinstance(name, str) or not _NEURON_CONFIG_NAME.fullmatch(name):
            raise InvalidSpec(f"neuron_config: field name {str(name)[:40]!r} must match {_NEURON_CONFIG_NAME.pattern}")
        _check_json_value(f"neuron_config.{name}", value)
    config = {k: v for k, v in given.items() if k not in NEURON_CONFIG_DROPPED}
    for name, default in NEURON_CONFIG_DEFAULTS.items():
        config.setdefault(name, default)
    for name, source in NEURON_CONFIG_DERIVED.items():
        config.setdefault(name, config[source])
    for name in _POSITIVE_INTS:
        _check(name, config[name], isinstance(config[name], int) and not isinstance(config[name], bool)
               and config[name] >= 1, "a positive integer")
    for name in _BOOLS:
        _check(name, config[name], isinstance(config[name], bool), "true or false")
    dtype = config["torch_dtype"]
    if isinstance(dtype, str):
        config["torch_dtype"] = dtype = dtype.removeprefix("torch.")
    _check("torch_dtype", dtype, dtype in _TORCH_DTYPES, " or ".join(_TORCH_DTYPES))
    for name in ("context_encoding_buckets", "token_generation_buckets"):
        buckets = config[name]
        _check(name, buckets, buckets is None or (isinstance(buckets, list) and bool(buckets) and all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets)),
            "null or a non-empty list of positive integers")
    config["on_device_sampling_config"] = _canonical_sampling(config["on_device_sampling_config"])
    if config["quantized"]:
        for name, default in QUANTIZATION_DEFAULTS.items():
            config.setdefault(name, default)
    else:
        for name in QUANTIZATION_DEFAULTS:
            config.pop(name, None)
    return config


def _canonical_sampling(given: Any) -> dict[str, Any] | None:
    if given is None:
        return None
    _check("on_device_sampling_config", given, isinstance(given, Mapping), "null or an object")
    sampling = {**ON_DEVICE_SAMPLING_DEFAULTS, **given}
    for name in ("top_p", "temperature"):  # 1 and 1.0 are one value
        value = sampling[name]
        _check(f"on_device_sampling_config.{name}", value,
               isinstance(value, int | float) and not isinstance(value, bool), "a number")
        sampling[name] = float(value)
    return sampling


def _check(name: str, value: Any, ok: bool, wanted: str) -> None:
    if not ok:
        raise InvalidSpec(f"neuron_config.{name}: {value!r} is not {wanted}")


def _check_json_value(where: str, value: Any) -> None:
    """Plain JSON (no NaN or infinity: not JSON, and never equal to itself)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidSpec(f"{where}: {value!r} is not a finite number")
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise InvalidSpec(f"{where}: keys must be strings")
            _check_json_value(f"{where}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_json_value(f"{where}[{i}]", v)
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise InvalidSpec(f"{where}: {type(value).__name__} is not a JSON value")


def _torch_neuronx_fields(spec: Mapping[str, Any]) -> dict[str, Any]:
    """What a torch-neuronx manifest's compiler object has beyond name, version and flags."""
    versions = {name: _field(spec, f"compiler.{name}") for name in ("torch_version", "neuronx_cc_version")}
    for name, version in versions.items():
        if not isinstance(version, str) or not version:
            raise InvalidSpec(f"compiler.{name}: missing")
    inline = _field(spec, "compiler").get("inline_weights_to_neff")
    return {**versions,
            "inline_weights_to_neff": INLINE_WEIGHTS_TO_NEFF_DEFAULT if inline is None else bool(inline)}


def key_for_spec(spec: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """(manifest, cache key) of a spec."""
    manifest = build_manifest(spec)
    return manifest, cache_key(manifest)


_MISSING = None  # what a field absent from one side is reported as


def _ordered_keys(known: tuple[str, ...], *sides: Any) -> list[str]:
    """The known keys in order, then any others either side has (another key_version's)."""
    extra: set[str] = set()
    for side in sides:
        if isinstance(side, Mapping):
            extra.update(k for k in side if k not in known)
    return [*known, *sorted(extra)]


def _get(side: Any, key: str) -> Any:
    return side.get(key, _MISSING) if isinstance(side, Mapping) else _MISSING


def manifest_diff(wanted: Mapping[str, Any], found: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The fields in which two manifests differ, in manifest order.

    Each entry is {"field": dotted path, "wanted": value, "found": value}. Nested objects are
    compared per field ("compiler.version"); inputs per input and field ("inputs[0].shape")
    when both have as many inputs, else as one "inputs" entry; lists such as flags as a whole.
    A field absent from one side is reported as None there.
    """
    diffs: list[dict[str, Any]] = []

    def differ(field: str, left: Any, right: Any) -> None:
        if left != right:
            diffs.append({"field": field, "wanted": left, "found": right})

    for top in _ordered_keys(MANIFEST_FIELDS, wanted, found):
        left, right = _get(wanted, top), _get(found, top)
        if top in _SUBFIELDS and isinstance(left, Mapping) and isinstance(right, Mapping):
            for sub in _ordered_keys(_SUBFIELDS[top], left, right):
                differ(f"{top}.{sub}", _get(left, sub), _get(right, sub))
        elif (
            top == "inputs"
            and isinstance(left, list)
            and isinstance(right, list)
            and len(left) == len(right)
        ):
            for index, (one, other) in enumerate(zip(left, right, strict=False)):
                if isinstance(one, Mapping) and isinstance(other, Mapping):
                    for sub in _ordered_keys(_INPUT_FIELDS, one, other):
                        differ(f"inputs[{index}].{sub}", _get(one, sub), _get(other, sub))
                else:
                    differ(f"inputs[{index}]", one, other)
        else:
            differ(top, left, right)
    return diffs
