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
from collections.abc import Mapping
from typing import Any

from neffcache.errors import InvalidSpec
from neffcache.flags import canonical_flags_and_isa
from neffcache.toolchain import CPU_ISA_LEVELS, DEFAULT_CPU_ISA

__all__ = [
    "DEFAULT_CPU_ISA",
    "KEY_VERSION",
    "MANIFEST_FIELDS",
    "aten_cpu_capability",
    "build_manifest",
    "cache_key",
    "canonical_json",
    "key_for_spec",
    "manifest_diff",
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
_SUBFIELDS: dict[str, tuple[str, ...]] = {
    "model": ("format", "digest"),
    "compiler": ("name", "version", "flags"),
    "runtime": ("name", "version"),
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
        },
        "runtime": {
            "name": _field(spec, "runtime.name"),
            "version": _field(spec, "runtime.version"),
        },
        # Always present (false when absent from the spec) so every manifest has one layout.
        "allow_toolchain_mismatch": bool(spec.get("allow_toolchain_mismatch", False)),
    }


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
