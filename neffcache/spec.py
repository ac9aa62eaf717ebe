"""The compile spec: what to build, as CI and pods send it. Schema only; the key is in key.py.

Shared by the service (request validation), the worker and the client (spec files), so it
depends on pydantic alone.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from neffcache.digests import (  # noqa: F401 - is_digest: the spec's digest rule, named with the schema
    DIGEST_PATTERN,
    HEX_PATTERN,
    is_digest,
)
from neffcache.errors import InvalidSpec
from neffcache.file_names import FILE_PATH_PATTERN, FILE_PATH_RULE, check_file_path, check_unique_file_names
from neffcache.key import canonical_neuron_config
from neffcache.toolchain import (
    INDUCTOR_TARGETS,
    NEURON_RUNTIME,
    NEURON_TARGETS,
    RUNTIME_NAMES,
    TARGETS,
    TORCH_NEURONX_PACKAGE,
    TORCH_RUNTIME,
    VERSION_PATTERN,
)

TORCH_NEURONX = TORCH_NEURONX_PACKAGE  # the compiler's name is its package's

DTYPES = (
    "float32", "float16", "bfloat16", "float64",
    "float8_e4m3fn", "float8_e5m2",
    "int8", "int16", "int32", "int64", "uint8", "bool",
)
# Which model formats (the first is the default), targets and runtime each compiler goes with.
COMPILERS: dict[str, dict[str, Any]] = {
    "neuronx-cc": {"format": "hlo", "formats": ("hlo",), "targets": NEURON_TARGETS, "runtime": NEURON_RUNTIME},
    "inductor": {"format": "torch-export", "formats": ("torch-export",), "targets": INDUCTOR_TARGETS,
                 "runtime": TORCH_RUNTIME},
    # torch_neuronx.trace: a PyTorch model in, a TorchScript module with its NEFFs inside out.
    # hf-checkpoint: an NxD Inference compiled-artifact folder, published with `push --dir`
    # (the spec then has a neuron_config; see FOLDER_FORMAT).
    TORCH_NEURONX: {"format": "torch-export", "formats": ("torch-export", "torchscript", "hf-checkpoint"),
                    "targets": NEURON_TARGETS, "runtime": NEURON_RUNTIME},
}
# CompilerSpec fields only torch-neuronx has: the versions its output also depends on, and the
# torch_neuronx.trace option that changes the output. Left out of a dump while unset, so the
# specs of other compilers read (and hash) as before.
TORCH_NEURONX_FIELDS = ("torch_version", "neuronx_cc_version", "inline_weights_to_neff", "nxd_inference_version")
# The model of a compiled-artifact folder (NxD Inference's compiled_model_path): a Hugging Face
# checkpoint, named by the digest of its index (config.json and every weight file with its sha256,
# client/specs.py). Such a spec has a neuron_config and compiler.nxd_inference_version, and no inputs.
FOLDER_FORMAT = "hf-checkpoint"
NAMESPACE_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
INPUT_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$"
MAX_FLAGS = 64
MAX_FLAG_LENGTH = 512


def text_problem(value: str) -> str | None:
    """Why `value` cannot be taken as text, or None. The one rule for every string the service is
    given (spec fields, query filters): no NUL character (no Postgres text column holds one) and
    no unpaired UTF-16 surrogate (JSON's "\\ud800" parses to one; it has no UTF-8 encoding)."""
    if "\x00" in value:
        return "contains a NUL character (\\x00)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"contains an unpaired surrogate ({value[exc.start]!r} at position {exc.start}), which is not UTF-8"
    return None


def check_text(value: str) -> str:
    """`value` itself, or ValueError naming it and what is wrong with it (see text_problem)."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"{value[:40]!r} {problem}")
    return value


# A str field or query parameter that follows the text rule.
Text = Annotated[str, AfterValidator(check_text)]


def _check_strings(value: Any) -> None:
    """check_text on every string in `value`: itself, or in a list, or a dict's keys and values."""
    if isinstance(value, str):
        check_text(value)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_strings(item)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*")
    @classmethod
    def _text_rule(cls, value: Any) -> Any:
        # Every string field of every spec model, however nested in lists and dicts (nested
        # models check their own).
        _check_strings(value)
        return value


class ModelRef(_Strict):
    format: Literal["hlo", "torch-export", "torchscript", "hf-checkpoint"]
    digest: str = Field(pattern=DIGEST_PATTERN, description="sha256:<64 lowercase hex> of the uploaded blob")


class InputSpec(_Strict):
    name: str = Field(pattern=INPUT_NAME_PATTERN)
    shape: list[int] = Field(min_length=1, max_length=16)
    dtype: Literal[DTYPES]  # type: ignore[valid-type]

    @field_validator("shape")
    @classmethod
    def _dims_positive(cls, shape: list[int]) -> list[int]:
        bad = [d for d in shape if d < 1]
        if bad:
            raise ValueError(f"every dimension must be a positive integer, got {shape}")
        return shape


def _unset(value: Any) -> bool:
    return value is None


class CompilerSpec(_Strict):
    name: Literal["neuronx-cc", "inductor", "torch-neuronx"]
    version: str | None = Field(default=None, pattern=VERSION_PATTERN)
    flags: list[str] = Field(default_factory=list, max_length=MAX_FLAGS)
    # torch-neuronx only (TORCH_NEURONX_FIELDS): filled in from the registered workers when left out.
    torch_version: str | None = Field(default=None, pattern=VERSION_PATTERN, exclude_if=_unset)
    neuronx_cc_version: str | None = Field(default=None, pattern=VERSION_PATTERN, exclude_if=_unset)
    inline_weights_to_neff: bool | None = Field(
        default=None, exclude_if=_unset,
        description="torch_neuronx.trace's inline_weights_to_neff (default true): the weights "
                    "inside the NEFF, or kept in the TorchScript module beside it",
    )
    nxd_inference_version: str | None = Field(
        default=None, pattern=VERSION_PATTERN, exclude_if=_unset,
        description="the neuronx-distributed-inference that compiled a folder (a spec with a neuron_config)",
    )

    @field_validator("flags")
    @classmethod
    def _flags_sane(cls, flags: list[str]) -> list[str]:
        for flag in flags:
            if not flag or len(flag) > MAX_FLAG_LENGTH or any(c in flag for c in "\x00\n\r"):
                raise ValueError(f"flag {flag[:40]!r} is empty, too long or has control characters")
        return flags


class RuntimeSpec(_Strict):
    name: Literal[RUNTIME_NAMES]  # type: ignore[valid-type]
    version: str | None = Field(default=None, pattern=VERSION_PATTERN)


class CompileSpec(_Strict):
    model: ModelRef
    # An HLO module fixes its own input shapes, so for `hlo` they may be left out (a graph taken
    # from a libneuronxla cache carries none); a torch.export program needs them.
    inputs: list[InputSpec] = Field(default_factory=list, max_length=256)
    target: Literal[TARGETS]  # type: ignore[valid-type]
    compiler: CompilerSpec
    runtime: RuntimeSpec | None = None
    namespace: str = Field(default="default", pattern=NAMESPACE_PATTERN)
    allow_toolchain_mismatch: bool = False
    neuron_config: dict[str, Any] | None = Field(
        default=None, exclude_if=_unset,
        description="NxD Inference's NeuronConfig of a compiled-artifact folder; canonicalised into the key "
                    "(neffcache.key.canonical_neuron_config)",
    )

    @field_validator("neuron_config")
    @classmethod
    def _neuron_config_canonical(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            try:
                canonical_neuron_config(value)
            except InvalidSpec as exc:
                raise ValueError(exc.detail) from None
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_runtime(cls, data: Any) -> Any:
        # The runtime name follows from the compiler, so a spec may leave `runtime` out.
        if isinstance(data, dict) and data.get("runtime") is None:
            compiler = data.get("compiler")
            name = compiler.get("name") if isinstance(compiler, dict) else None
            if isinstance(name, str) and name in COMPILERS:  # anything else is refused below
                data = {**data, "runtime": {"name": COMPILERS[name]["runtime"]}}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> CompileSpec:
        rules = COMPILERS[self.compiler.name]
        if self.compiler.name != TORCH_NEURONX:
            given = [f for f in TORCH_NEURONX_FIELDS if getattr(self.compiler, f) is not None]
            if given:
                raise ValueError(f"compiler.{given[0]}: only compiler {TORCH_NEURONX!r} takes it")
        if self.target not in rules["targets"]:
            raise ValueError(
                f"target {self.target!r} is not built by compiler {self.compiler.name!r} "
                f"(it builds {', '.join(rules['targets'])})"
            )
        if self.model.format not in rules["formats"]:
            raise ValueError(
                f"model.format {self.model.format!r} does not fit compiler {self.compiler.name!r} "
                f"(it takes {' or '.join(repr(f) for f in rules['formats'])})"
            )
        assert self.runtime is not None
        if self.runtime.name != rules["runtime"]:
            raise ValueError(
                f"runtime.name {self.runtime.name!r} does not fit compiler {self.compiler.name!r} "
                f"(its output runs on {rules['runtime']!r})"
            )
        self._folder_consistent()
        if not self.inputs and self.model.format not in ("hlo", FOLDER_FORMAT):
            raise ValueError(f"inputs: at least one input is required for model.format {self.model.format!r}")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"inputs: names must be unique, got {names}")
        return self

    def _folder_consistent(self) -> None:
        """model.format hf-checkpoint, a neuron_config and compiler.nxd_inference_version go together."""
        folder = {"model.format hf-checkpoint": self.model.format == FOLDER_FORMAT,
                  "neuron_config": self.neuron_config is not None,
                  "compiler.nxd_inference_version": self.compiler.nxd_inference_version is not None}
        if any(folder.values()) and not all(folder.values()):
            given = [k for k, v in folder.items() if v]
            missing = [k for k, v in folder.items() if not v]
            raise ValueError(f"{missing[0]}: required with {given[0]} (a compiled-artifact folder's spec has "
                             f"{', '.join(folder)})")
        if self.neuron_config is not None and self.inputs:
            raise ValueError("inputs: a compiled-artifact folder's shapes are its neuron_config's")

    def is_resolved(self) -> bool:
        versions = [self.compiler.version, self.runtime and self.runtime.version]
        if self.compiler.name == TORCH_NEURONX:
            versions += [self.compiler.torch_version, self.compiler.neuronx_cc_version]
        return all(versions)


ANNOTATION_KEY_PATTERN = r"^[a-z][a-z0-9_.-]{0,63}$"
MAX_ANNOTATION_BYTES = 16384


def _check_annotations(values: dict[str, str]) -> dict[str, str]:
    for key in values:
        if not re.fullmatch(ANNOTATION_KEY_PATTERN, key):
            raise ValueError(f"annotation name {key[:40]!r} must match {ANNOTATION_KEY_PATTERN}")
    if sum(len(k) + len(v) for k, v in values.items()) > MAX_ANNOTATION_BYTES:
        raise ValueError(f"annotations exceed {MAX_ANNOTATION_BYTES} bytes")
    return values


Annotations: dict[str, str] = Field(
    default_factory=dict,
    description="free-form strings kept with the job and the artifact but NOT part of the key "
    "(e.g. neuron_cache.module, the libneuronxla cache folder the graph came from)",
)


class CompileRequest(_Strict):
    spec: CompileSpec
    force: bool = Field(default=False, description="recompile even if the last compile of this key failed")
    annotations: dict[str, str] = Annotations

    _annotations_ok = field_validator("annotations")(_check_annotations)


class PublishedFileRef(_Strict):
    name: str = Field(description=f"the file's name, or its path in a folder artifact: {FILE_PATH_RULE}",
                      json_schema_extra={"pattern": FILE_PATH_PATTERN})
    digest: str = Field(pattern=DIGEST_PATTERN, description="an uploaded blob (PUT /v1/blobs first)")

    _name_ok = field_validator("name")(check_file_path)


# A folder (NxD Inference's: model.pt, neuron_config.json, one weight shard per rank of up to 64
# or 128 ranks, a NEFF per bucket) has more files than a single compile's outputs.
MAX_PUBLISHED_FILES = 1024


class PublishRequest(_Strict):
    """An artifact compiled elsewhere (a host's libneuronxla cache), published as it is."""

    spec: CompileSpec
    files: list[PublishedFileRef] = Field(min_length=1, max_length=MAX_PUBLISHED_FILES)
    compile_seconds: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    annotations: dict[str, str] = Annotations

    _annotations_ok = field_validator("annotations")(_check_annotations)

    @field_validator("files")
    @classmethod
    def _unique_names(cls, files: list[PublishedFileRef]) -> list[PublishedFileRef]:
        # Unique ignoring case too: on a case-insensitive file system (macOS, Windows) two names
        # that differ only in case are one file.
        check_unique_file_names([f.name for f in files])
        return files


class LookupRequest(_Strict):
    spec: CompileSpec


# POST /v1/prewarm: at most this many entries (sources) in one request, each one compile decision.
MAX_PREWARM_ENTRIES = 500
MAX_PREWARM_DAYS = 366


class PrewarmSpecEntry(_Strict):
    name: str = Field(min_length=1, max_length=256, description="what the answer calls the entry (a spec file "
                                                                  "entry's name or label)")
    spec: CompileSpec


class PrewarmTop(_Strict):
    n: int = Field(ge=1, le=MAX_PREWARM_ENTRIES, description="the N artifacts with the most lookup hits")
    since_days: float = Field(default=7.0, gt=0, le=MAX_PREWARM_DAYS, description="counted over the last DAYS days")


class PrewarmRequest(_Strict):
    """Build what a deployment uses again for a new toolchain: one source (artifact keys, specs, or
    the most used artifacts), each re-keyed with the new versions and submitted as a compile."""

    compiler_version: str = Field(pattern=VERSION_PATTERN, description="the new compiler: neuronx-cc's version, "
                                  "torch-neuronx's (the rest of its toolchain is resolved), or inductor's torch")
    runtime_version: str | None = Field(default=None, pattern=VERSION_PATTERN, description="left out: resolved "
                                        "(the SDK release's runtime; for inductor the torch version)")
    keys: list[Annotated[str, Field(pattern=HEX_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=MAX_PREWARM_ENTRIES, description="artifacts (whole keys: a lock file's)")
    specs: list[PrewarmSpecEntry] | None = Field(default=None, min_length=1, max_length=MAX_PREWARM_ENTRIES)
    top: PrewarmTop | None = None
    submit: bool = Field(default=True, description="false: report readiness only; nothing is compiled or counted")

    @model_validator(mode="after")
    def _one_source(self) -> PrewarmRequest:
        given = [name for name in ("keys", "specs", "top") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one source of keys, specs or top, got {' and '.join(given) or 'none'}")
        return self
