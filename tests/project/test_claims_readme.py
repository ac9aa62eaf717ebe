"""The README's table of guarantees ("What is guaranteed, and the test that shows it") names tests
that exist: each row one or two `tests/...py::test_name`, each a test function of that file (a
test renamed or removed must take its row with it)."""

from __future__ import annotations

import ast
import re

from tests.support.stack import REPO

SECTION = "## What is guaranteed, and the test that shows it"
CITED = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _rows() -> list[tuple[str, list[tuple[str, str]]]]:
    text = (REPO / "README.md").read_text()
    assert text.count(SECTION) == 1, SECTION
    section = text[text.index(SECTION):].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| guarantee |"):
            claim, shown_by = line[2:].rsplit(" | ", 1)
            rows.append((claim, CITED.findall(shown_by)))
    return rows


def _tests_of(path: str) -> set[str]:
    tree = ast.parse((REPO / path).read_text())
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")}


def test_every_guarantee_names_one_or_two_tests_that_exist() -> None:
    rows = _rows()
    assert len(rows) >= 60
    for claim, cited in rows:
        assert 1 <= len(cited) <= 2, claim
        for path, name in cited:
            assert (REPO / path).is_file(), (claim, path)
            assert name in _tests_of(path), (claim, f"{path}::{name}")


def test_the_section_comes_just_before_development() -> None:
    text = (REPO / "README.md").read_text()
    assert text.index(SECTION) < text.index("## Development")
    between = text[text.index(SECTION) + len(SECTION):text.index("## Development")]
    assert "\n## " not in between
