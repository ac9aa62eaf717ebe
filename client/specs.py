"""Spec files: the compile specs CI keeps in its own repository.

A file is YAML or JSON and holds one spec, a list of specs, or {"specs": [...]}. Each spec is
the service's compile spec (neffcache.spec.CompileSpec) with three conveniences:

    name: bucket-128           # optional label, shown in output and in the lock file
    model:
      path: graphs/b128.hlo.pb # instead of `digest`: relative to the spec file; hashed here
      format: hlo              # may be left out: it follows from compiler.name
    inputs:
      - input_ids=1x128:int64  # shorthand for {name, shape, dtype}

Everything is checked locally before any network call, and every problem is one line naming
the file, the spec and the field.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from neffcache.client.files import read_text, write_atomically
from neffcache.digests import DIGEST_FORM, digest_of, is_digest
from neffcache.errors import UsageError
from neffcache.spec import COMPILERS, FOLDER_FORMAT, CompileSpec
from neffcache.toolchain import NEURON_TARGETS

HASH_CHUNK = 1024 * 1024
_PLACEHOLDER_DIGEST = digest_of("0" * 64)
_INPUT_RE = re.compile(r"^(?P<name>[^=]+)=(?P<shape>[0-9]+(?:[x,][0-9]+)*):(?P<dtype>[A-Za-z0-9_]+)$")


@dataclass
class SpecEntry:
    """One spec to send: `spec` is ready for the service once `model_path` has been hashed."""

    label: str  # where it came from, for messages: "deploy/neffs.yaml spec 2 (bucket-128)"
    name: str | None
    spec: dict[str, Any]
    model_path: Path | None = None
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return self.spec["model"]["digest"]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return digest_of(h.hexdigest())


def parse_input(text: str) -> dict[str, Any]:
    """'x=8x64:float32' (or 8,64) -> {"name": "x", "shape": [8, 64], "dtype": "float32"}."""
    m = _INPUT_RE.match(text.strip())
    if not m:
        raise UsageError(f"input {text!r}: expected NAME=DIMxDIM...:DTYPE, e.g. x=8x64:float32")
    shape = [int(d) for d in re.split(r"[x,]", m["shape"])]
    return {"name": m["name"], "shape": shape, "dtype": m["dtype"]}


def _shorthand_input(item: Any, where: str) -> Any:
    """An input written 'x=8x64:float32' as a mapping; anything else as it is (the schema checks it)."""
    if not isinstance(item, str):
        return item
    try:
        return parse_input(item)
    except UsageError as exc:
        raise UsageError(f"{where}: {exc.detail}") from None


def default_compiler(target: str) -> str:
    return "neuronx-cc" if target in NEURON_TARGETS else "inductor"


def _read(path: Path) -> Any:
    text = read_text(path, "spec file")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"spec file {path}: not valid JSON: {exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"spec file {path}: not valid YAML{where}: {problem}") from None


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ""
        for p in err.get("loc", ()):
            loc += f"[{p}]" if isinstance(p, int) else (f".{p}" if loc else str(p))
        msg = err.get("msg", "invalid")
        if err.get("type") in ("literal_error", "string_pattern_mismatch", "extra_forbidden", "int_parsing"):
            msg = f"{msg} (got {err.get('input')!r})"
        parts.append(f"{loc or 'spec'}: {msg}")
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def check_spec(raw: dict[str, Any], label: str) -> None:
    """Validate against the service's own schema; one line naming the field on failure."""
    try:
        CompileSpec.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(f"{label}: {_validation_message(exc)}") from None


def normalise(raw: Any, label: str, base_dir: Path | None) -> SpecEntry:
    """One spec from a file or from flags -> SpecEntry (the digest filled in later if a path)."""
    if not isinstance(raw, dict):
        raise UsageError(f"{label}: a spec must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    name = raw.pop("name", None)
    if name is not None and not isinstance(name, str):
        raise UsageError(f"{label}: name must be a string")
    if name:
        label = f"{label} ({name})"
    model = raw.get("model")
    if not isinstance(model, dict):
        raise UsageError(f"{label}: model: required, a mapping with path or digest, and format")
    model = dict(model)
    compiler = raw.get("compiler")
    if isinstance(compiler, str):  # `compiler: inductor` shorthand
        compiler = raw["compiler"] = {"name": compiler}
    if "format" not in model and isinstance(compiler, dict) and compiler.get("name") in COMPILERS:
        model["format"] = COMPILERS[compiler["name"]]["format"]
    model_path: Path | None = None
    if "path" in model:
        given = model.pop("path")
        if not isinstance(given, str) or not given:
            raise UsageError(f"{label}: model.path must be a file path")
        model_path = Path(given).expanduser()
        if not model_path.is_absolute() and base_dir is not None:
            model_path = base_dir / model_path
        if model.get("format") == FOLDER_FORMAT:
            if not model_path.is_dir():
                raise UsageError(f"{label}: model.path {given!r}: no such checkpoint folder ({model_path})")
        elif not model_path.is_file():
            raise UsageError(f"{label}: model.path {given!r}: no such file ({model_path})")
        model.setdefault("digest", _PLACEHOLDER_DIGEST)
    elif "digest" in model and isinstance(model["digest"], str) and not is_digest(model["digest"]):
        raise UsageError(f"{label}: model.digest {model['digest']!r} is not {DIGEST_FORM}")
    raw["model"] = model
    inputs = raw.get("inputs")
    if isinstance(inputs, list):
        raw["inputs"] = [_shorthand_input(i, f"{label}: inputs[{n}]") for n, i in enumerate(inputs)]
    check_spec(raw, label)
    return SpecEntry(label=label, name=name, spec=raw, model_path=model_path)


def load_spec_file(path: Path) -> list[SpecEntry]:
    data = _read(path)
    if isinstance(data, dict) and "specs" in data and "model" not in data:
        data = data["specs"]
    items = data if isinstance(data, list) else [data]
    if not items or data is None:
        raise UsageError(f"spec file {path}: holds no spec")
    base = path.resolve().parent
    many = isinstance(data, list)
    return [normalise(item, f"{path} spec {i + 1}" if many else str(path), base) for i, item in enumerate(items)]


def load_spec_files(paths: list[Path]) -> list[SpecEntry]:
    entries: list[SpecEntry] = []
    for p in paths:
        entries.extend(load_spec_file(p))
    return entries


def hash_models(entries: list[SpecEntry]) -> None:
    """Fill in model.digest for every spec that named a path (each file hashed once). A checkpoint
    folder (hf-checkpoint) is named by its index (checkpoint_index), which is what gets uploaded:
    `model_path` then names a file holding it."""
    seen: dict[Path, tuple[str, Path]] = {}
    for entry in entries:
        if entry.model_path is None:
            continue
        real = entry.model_path.resolve()
        if real not in seen:
            try:
                seen[real] = _index_blob(checkpoint_index(real)) if real.is_dir() else (sha256_file(real), real)
            except OSError as exc:
                raise UsageError(f"{entry.label}: model.path {entry.model_path}: cannot read it ({exc})") from None
        entry.spec["model"]["digest"], entry.model_path = seen[real]


# A Hugging Face checkpoint's files that decide what NxD Inference compiles: the model's
# config.json and its weights (model.safetensors, sharded model-00001-of-00004.safetensors with
# their index, pytorch_model*.bin, medusa_heads.pt). Tokenizer files, README and
# generation_config.json change nothing compiled.
CHECKPOINT_CONFIG = "config.json"
CHECKPOINT_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".index.json")


def checkpoint_index(folder: Path) -> bytes:
    """The index of a checkpoint folder, the blob an hf-checkpoint model.digest names: canonical
    JSON of its config.json and weight files, each with its sha256."""
    if not (folder / CHECKPOINT_CONFIG).is_file():
        raise UsageError(f"checkpoint folder {folder}: no {CHECKPOINT_CONFIG}")
    files = {CHECKPOINT_CONFIG: sha256_file(folder / CHECKPOINT_CONFIG)}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.endswith(CHECKPOINT_WEIGHT_SUFFIXES):
            files[path.name] = sha256_file(path)
    if len(files) == 1:
        raise UsageError(f"checkpoint folder {folder}: no weight files (*{', *'.join(CHECKPOINT_WEIGHT_SUFFIXES)})")
    return json.dumps({"checkpoint_index": 1, "files": files}, sort_keys=True, separators=(",", ":")).encode()


def _index_blob(index: bytes) -> tuple[str, Path]:
    """The index's digest, and a file holding it (in the temp folder: it is uploaded from there)."""
    digest = digest_of(hashlib.sha256(index).hexdigest())
    path = Path(tempfile.gettempdir()) / f"neffcache-checkpoint-index-{digest[7:23]}.json"
    write_atomically(path, index, "the checkpoint index")
    return digest, path
