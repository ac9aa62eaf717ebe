"""client/specs.py in process: spec files (YAML or JSON; one spec, a list, or {"specs": [...]}),
their conveniences (model.path, input shorthand, compiler shorthand, format from the compiler), and
refusals: one line that names the file, the spec and the field."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from neffcache.client.specs import (
    default_compiler,
    hash_models,
    load_spec_file,
    load_spec_files,
    normalise,
    parse_input,
    sha256_file,
)
from neffcache.errors import EXIT_USAGE, UsageError

MODEL_BYTES = b"a torch.export program, as far as this test cares"
DIGEST = "sha256:" + "cd" * 32

INDUCTOR_YAML = """\
model: {path: graphs/m.pt2}
inputs: ["x=8x64:float32"]
target: cpu
compiler: inductor
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "graphs").mkdir()
    (tmp_path / "graphs" / "m.pt2").write_bytes(MODEL_BYTES)
    return tmp_path


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("text", "parsed"), [
    ("x=8x64:float32", {"name": "x", "shape": [8, 64], "dtype": "float32"}),
    ("x=8,64:float32", {"name": "x", "shape": [8, 64], "dtype": "float32"}),
    ("input_ids=1x128:int64", {"name": "input_ids", "shape": [1, 128], "dtype": "int64"}),
    ("  mask=4:bool  ", {"name": "mask", "shape": [4], "dtype": "bool"}),
    ("a.b:c=2x3x4:bfloat16", {"name": "a.b:c", "shape": [2, 3, 4], "dtype": "bfloat16"}),
])
def test_parse_input(text: str, parsed: dict[str, object]) -> None:
    assert parse_input(text) == parsed


@pytest.mark.parametrize("text", ["x8x64:float32", "x=:float32", "x=8x64", "x=8xx64:float32", "=8:int8",
                                  "x=8x64:float32:more", "x=-1:int8", "x=8.5:float32"])
def test_parse_input_refuses_with_the_form_to_use(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_input(text)
    assert caught.value.detail == f"input {text!r}: expected NAME=DIMxDIM...:DTYPE, e.g. x=8x64:float32"


@pytest.mark.parametrize(("target", "compiler"), [("trn1", "neuronx-cc"), ("trn2", "neuronx-cc"),
                                                  ("inf2", "neuronx-cc"), ("cpu", "inductor"), ("cuda", "inductor")])
def test_default_compiler(target: str, compiler: str) -> None:
    assert default_compiler(target) == compiler


def test_one_spec_with_every_convenience(folder: Path) -> None:
    path = _write(folder, "neffs.yaml", INDUCTOR_YAML)
    (entry,) = load_spec_file(path)
    assert entry.label == str(path) and entry.name is None
    assert entry.model_path == folder / "graphs" / "m.pt2"  # relative to the spec file
    assert entry.spec == {
        "model": {"format": "torch-export", "digest": "sha256:" + "0" * 64},  # format from the compiler
        "inputs": [{"name": "x", "shape": [8, 64], "dtype": "float32"}],
        "target": "cpu",
        "compiler": {"name": "inductor"},
    }
    hash_models([entry])
    assert entry.digest == "sha256:" + hashlib.sha256(MODEL_BYTES).hexdigest() == sha256_file(entry.model_path)


@pytest.mark.parametrize(("name", "text"), [
    ("list.yaml", "- name: a\n  {body}\n- name: b\n  {body}\n"),
    ("wrapped.yaml", "specs:\n  - name: a\n    {body}\n  - name: b\n    {body}\n"),
    ("list.json", "json"),
])
def test_a_list_of_specs_is_labelled_by_position_and_name(folder: Path, name: str, text: str) -> None:
    body = {"model": {"digest": DIGEST, "format": "hlo"}, "target": "trn2", "compiler": {"name": "neuronx-cc"}}
    if text == "json":
        text = json.dumps([{"name": "a", **body}, {"name": "b", **body}])
    else:
        indent = "\n    " if name == "wrapped.yaml" else "\n  "
        text = text.replace("{body}", indent.join(f"{k}: {json.dumps(v)}" for k, v in body.items()))
    path = _write(folder, name, text)
    entries = load_spec_file(path)
    assert [e.label for e in entries] == [f"{path} spec 1 (a)", f"{path} spec 2 (b)"]
    assert [e.name for e in entries] == ["a", "b"]
    assert all(e.spec == body and e.model_path is None and e.digest == DIGEST for e in entries)


def test_several_files_and_one_model_hashed_once(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _write(folder, "a.yaml", INDUCTOR_YAML)
    second = _write(folder, "b.yaml", INDUCTOR_YAML.replace("8x64", "16x64"))
    entries = load_spec_files([first, second])
    assert [e.spec["inputs"][0]["shape"] for e in entries] == [[8, 64], [16, 64]]
    hashed: list[Path] = []
    from neffcache.client import specs

    monkeypatch.setattr(specs, "sha256_file", lambda p: hashed.append(p) or DIGEST)
    hash_models(entries)
    assert hashed == [folder / "graphs" / "m.pt2"]
    assert [e.digest for e in entries] == [DIGEST, DIGEST]


def test_an_hlo_spec_may_leave_inputs_out_and_an_inputs_mapping_is_kept(folder: Path) -> None:
    path = _write(folder, "hlo.yaml", f"model: {{digest: '{DIGEST}'}}\ntarget: trn1\ncompiler: neuronx-cc\n")
    (entry,) = load_spec_file(path)
    assert entry.spec["model"] == {"digest": DIGEST, "format": "hlo"} and "inputs" not in entry.spec
    raw = {"model": {"digest": DIGEST}, "target": "trn1", "compiler": "neuronx-cc",
           "inputs": [{"name": "a", "shape": [1], "dtype": "int8"}, "b=2:int8"]}
    assert normalise(raw, "flags", None).spec["inputs"] == [{"name": "a", "shape": [1], "dtype": "int8"},
                                                           {"name": "b", "shape": [2], "dtype": "int8"}]


# (file name, its text, what the one-line refusal holds after "<file>[ spec N][ (name)]: ")
REFUSED = [
    ("bad.yaml", "model: [\n", "not valid YAML at line 2"),
    ("bad.json", '{"model": ', "not valid JSON"),
    ("empty.yaml", "", "holds no spec"),
    ("empty-list.yaml", "[]\n", "holds no spec"),
    ("number.yaml", "- 3\n", "spec 1: a spec must be a mapping, got int"),
    ("name.yaml", "name: [a]\nmodel: {digest: x}\n", "name must be a string"),
    ("no-model.yaml", "target: cpu\ncompiler: inductor\n", "model: required, a mapping with path or digest"),
    ("path-type.yaml", "model: {path: 3}\ntarget: cpu\ncompiler: inductor\n", "model.path must be a file path"),
    ("no-file.yaml", "model: {path: gone.pt2}\ninputs: ['x=1:int8']\ntarget: cpu\ncompiler: inductor\n",
     "model.path 'gone.pt2': no such file"),
    ("digest.yaml",
     "- name: enc\n  model: {digest: 'sha256:abc', format: hlo}\n  target: trn1\n  compiler: neuronx-cc\n",
     "spec 1 (enc): model.digest 'sha256:abc' is not sha256:<64 lowercase hex>"),
    ("shorthand.yaml", INDUCTOR_YAML.replace("x=8x64:float32", "x=8x:float32"),
     "inputs[0]: input 'x=8x:float32': expected NAME=DIMxDIM...:DTYPE"),
    ("dtype.yaml", INDUCTOR_YAML.replace("float32", "float33"), "inputs[0].dtype: "),
    ("shape.yaml", INDUCTOR_YAML.replace('["x=8x64:float32"]', "[{name: x, shape: [8, 0], dtype: int8}]"),
     "inputs[0].shape: "),
    ("target.yaml", INDUCTOR_YAML.replace("target: cpu", "target: trn1"),
     "spec: Value error, target 'trn1' is not built by"),
    ("unknown-target.yaml", INDUCTOR_YAML.replace("target: cpu", "target: tpu"), "target: Input should be"),
    ("compiler.yaml", INDUCTOR_YAML.replace("compiler: inductor", "compiler: tvm"), "compiler.name: Input should be"),
    ("extra.yaml", INDUCTOR_YAML + "flavour: x\n", "flavour: Extra inputs are not permitted (got 'x')"),
    ("flags.yaml", INDUCTOR_YAML.replace("compiler: inductor", "compiler: {name: inductor, flags: ['']}"),
     "compiler.flags: "),
    ("many.yaml", "model: {digest: " + DIGEST + ", format: hlo}\ntarget: trn1\ncompiler: neuronx-cc\n"
     "inputs: [{name: a, shape: [1], dtype: q}, {name: b, shape: [1], dtype: q}, {name: c, shape: [1], dtype: q},"
     " {name: d, shape: [1], dtype: q}]\n", "; and 1 more"),
]


@pytest.mark.parametrize(("name", "text", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_a_bad_spec_file_is_refused_in_one_line_naming_the_field(folder: Path, name: str, text: str,
                                                                  words: str) -> None:
    path = _write(folder, name, text)
    with pytest.raises(UsageError) as caught:
        load_spec_file(path)
    message = caught.value.detail
    assert message.startswith(f"spec file {path}") or message.startswith(str(path)), message
    assert words in message, message
    assert "\n" not in message and "Traceback" not in message
    assert caught.value.exit_code == EXIT_USAGE


def test_a_missing_spec_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        load_spec_file(tmp_path / "nowhere.yaml")
    assert caught.value.detail == f"spec file {tmp_path / 'nowhere.yaml'} does not exist"


def test_a_model_that_vanished_before_hashing_is_named(folder: Path) -> None:
    (entry,) = load_spec_file(_write(folder, "neffs.yaml", INDUCTOR_YAML))
    entry.model_path.unlink()
    with pytest.raises(UsageError) as caught:
        hash_models([entry])
    assert caught.value.detail.startswith(f"{entry.label}: model.path {entry.model_path}: cannot read it")
