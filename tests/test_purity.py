"""The key, flag and NEFF-header modules are pure: standard library only, no I/O of their own;
and the client never imports the server side."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PURE = {
    "neffcache/key.py": {"neffcache.errors", "neffcache.flags"},
    "neffcache/flags.py": {"neffcache.errors"},
    "neffcache/neff.py": set(),
}
IO_CALLS = {"open", "print", "input"}


def _imports(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", sorted(PURE))
def test_module_is_pure(path: str) -> None:
    tree = ast.parse((REPO / path).read_text())
    for name in _imports(tree):
        top = name.split(".")[0]
        assert top in sys.stdlib_module_names or top == "__future__" or name in PURE[path], (path, name)
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not calls & IO_CALLS, (path, calls & IO_CALLS)


def test_key_module_has_a_version() -> None:
    from neffcache import key

    assert isinstance(key.KEY_VERSION, int) and key.KEY_VERSION >= 1


def test_client_and_shared_code_never_import_service_or_workers() -> None:
    for folder in ("client", "neffcache"):
        for path in (REPO / folder).rglob("*.py"):
            for name in _imports(ast.parse(path.read_text())):
                assert name.split(".")[0] not in ("service", "workers"), (str(path), name)
    for path in (REPO / "service").rglob("*.py"):
        for name in _imports(ast.parse(path.read_text())):
            assert name.split(".")[0] not in ("workers", "client"), (str(path), name)
    for path in (REPO / "workers").rglob("*.py"):
        for name in _imports(ast.parse(path.read_text())):
            assert name.split(".")[0] not in ("service", "client"), (str(path), name)
