"""neffcache/spec.py: the text rule every string of a spec follows (no NUL, no unpaired
surrogate), the safe file name rule of published files, and the numbers a JSON answer can hold."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from pydantic import ValidationError

from neffcache.file_names import FILE_PATH_PATTERN, check_file_name
from neffcache.spec import CompileRequest, PublishRequest, check_text, text_problem

DIGEST = "sha256:" + "ab" * 32
SPEC: dict[str, Any] = {
    "model": {"format": "torch-export", "digest": DIGEST},
    "inputs": [{"name": "x", "shape": [8, 64], "dtype": "float32"}],
    "target": "cpu",
    "compiler": {"name": "inductor", "version": "2.13.0", "flags": ["cpp.march=x86-64-v4"]},
}


def _errors(model: type[Any], body: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    return caught.value.errors()


# --- the text rule -----------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "problem"), [
    ("plain", None),
    ("ünïcödé ✓ 😀", None),
    ("tab\tand\nnewline", None),  # control characters are for the fields' own rules
    ("a\x00b", "NUL"),
    ("\x00", "NUL"),
    ("a=\ud800", "unpaired surrogate"),
    ("\udfff", "unpaired surrogate"),
    ("\ud83d\ude00", "unpaired surrogate"),  # two halves as two characters are not a character either
])
def test_the_text_rule(value: str, problem: str | None) -> None:
    found = text_problem(value)
    if problem is None:
        assert found is None and check_text(value) == value
    else:
        assert found is not None and problem in found
        with pytest.raises(ValueError, match=problem):
            check_text(value)


def _compile_with(path: str, value: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"spec": copy.deepcopy(SPEC)}
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    node[int(last) if last.isdigit() else last] = value
    return body


@pytest.mark.parametrize("bad", ["a\x00", "a=\ud800"], ids=["nul", "surrogate"])
@pytest.mark.parametrize(("path", "wrap"), [
    ("spec.compiler.flags", lambda v: ["cpp.march=x86-64-v4", v]),
    ("annotations", lambda v: {"neuron_cache.module": v}),
    ("annotations", lambda v: {v: "x"}),
    ("spec.namespace", lambda v: v),
    ("spec.inputs.0.name", lambda v: v),
    ("spec.compiler.version", lambda v: "2.13.0" + v),
    ("spec.model.digest", lambda v: DIGEST + v),
])
def test_every_string_of_a_request_follows_the_text_rule(path: str, wrap: Any, bad: str) -> None:
    body = _compile_with(path, wrap(bad))
    # What JSON delivers: a lone surrogate arrives as the escape "\ud800".
    assert json.loads(json.dumps(body)) == body
    problems = _errors(CompileRequest, body)
    assert [p["loc"][:len(path.split("."))] for p in problems][0] == tuple(
        int(p) if p.isdigit() else p for p in path.split("."))


def test_free_text_with_a_surrogate_is_refused_by_the_text_rule_itself() -> None:
    # Fields without a pattern (flags, annotation values) are where only the text rule stands.
    for body in (_compile_with("spec.compiler.flags", ["a=\ud800"]),
                 _compile_with("annotations", {"note": "caf\x00e"})):
        (problem,) = _errors(CompileRequest, body)
        assert "surrogate" in problem["msg"] or "NUL" in problem["msg"]


def test_an_annotation_name_with_a_trailing_newline_is_refused() -> None:
    (problem,) = _errors(CompileRequest, _compile_with("annotations", {"note\n": "x"}))
    assert problem["loc"] == ("annotations",)


# --- published file names ----------------------------------------------------------------------
SAFE = ["model.neff", "compile.log", "model.pt2", "model.hlo_module.pb", "compile_flags.json", "model.done",
        "a", "A-1_b.c", "x" * 128, "console", "com10", "nul_not", "auxiliary.txt", "lpt", "model.neff.1"]
UNSAFE = [
    ("", "empty"), (".", "the folder itself"), ("..", "the parent folder"), ("...", "only dots"),
    (".hidden", "hidden"), ("-rf", "an option"), ("-", "an option"), ("model.", "Windows drops the dot"),
    ("a//b", "a separator, around an empty component"), ("a\\b", "a Windows separator"), ("/etc/passwd", "absolute"),
    ("a\x00b", "NUL"), ("a\nb", "newline"), ("model.neff\n", "trailing newline"), ("a\tb", "tab"),
    ("a b", "space"), ("a:b", "a drive or a stream (Windows)"), ("a*b", "a glob"), ("ü.neff", "not ASCII"),
    ("x" * 129, "too long"),
    ("CON", "a device"), ("nul", "a device"), ("Aux.txt", "a device"), ("com1.neff", "a device"),
    ("LPT9", "a device"), ("prn.tar.gz", "a device"),
]


@pytest.mark.parametrize("name", SAFE)
def test_safe_file_names_are_published(name: str) -> None:
    assert check_file_name(name) == name
    PublishRequest.model_validate({"spec": SPEC, "files": [{"name": name, "digest": DIGEST}]})


@pytest.mark.parametrize(("name", "why"), UNSAFE, ids=[f"{n!r} ({w})" for n, w in UNSAFE])
def test_unsafe_file_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(ValueError, match="not a safe file name"):
        check_file_name(name)
    problems = _errors(PublishRequest, {"spec": SPEC, "files": [{"name": name, "digest": DIGEST}]})
    assert problems[0]["loc"] == ("files", 0, "name")


def test_the_file_name_pattern_in_the_schema_is_the_rule() -> None:
    import re

    schema = PublishRequest.model_json_schema()["$defs"]["PublishedFileRef"]["properties"]["name"]
    assert schema["pattern"] == FILE_PATH_PATTERN  # a name, or a folder artifact's path of names
    for name in SAFE:
        assert re.search(schema["pattern"], name), name
    for name, _ in UNSAFE:
        if "\n" not in name:  # a JSON Schema `$` is the end of the text; Python's also matches before a final \n
            assert not re.search(schema["pattern"], name), name


def test_two_names_that_differ_only_in_case_are_one_file() -> None:
    files = [{"name": "model.neff", "digest": DIGEST}, {"name": "Model.neff", "digest": DIGEST}]
    (problem,) = _errors(PublishRequest, {"spec": SPEC, "files": files})
    assert "ignoring case" in problem["msg"]


# --- numbers an answer must be able to hold ----------------------------------------------------
@pytest.mark.parametrize("seconds", [float("inf"), float("nan"), -1.0])
def test_compile_seconds_is_a_finite_count(seconds: float) -> None:
    body = {"spec": SPEC, "files": [{"name": "model.pt2", "digest": DIGEST}], "compile_seconds": seconds}
    (problem,) = _errors(PublishRequest, body)
    assert problem["loc"] == ("compile_seconds",)


@pytest.mark.parametrize("name", [[], {}, ["inductor"], {"inductor": 1}, None, 3])
def test_a_compiler_name_of_another_type_is_refused_not_a_crash(name: Any) -> None:
    body = {"spec": {**SPEC, "compiler": {"name": name}}}
    body["spec"].pop("runtime", None)
    problems = _errors(CompileRequest, body)
    assert ("spec", "compiler", "name") in [p["loc"][:3] for p in problems]
