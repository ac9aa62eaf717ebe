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
    "neffcache/neff.py": {"neffcache.errors"},
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


# Each part's folder, and the parts it must never import (by their installed names).
PARTS = {
    "neffcache": ("neffcache.service", "neffcache.workers", "neffcache.client"),
    "client": ("neffcache.service", "neffcache.workers", "neffcache.migrations"),
    "service": ("neffcache.workers", "neffcache.client"),
    "workers": ("neffcache.service", "neffcache.client"),
}
FOLDERS = ("neffcache", "service", "workers", "client", "migrations", "tests", "bench")
OLD_TOP_LEVEL = ("service", "workers", "client", "migrations")


def _under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("folder", sorted(PARTS))
def test_parts_never_import_each_other(folder: str) -> None:
    for path in (REPO / folder).rglob("*.py"):
        if folder == "neffcache" and path.name == "entrypoints.py":
            continue  # the console-script wrappers import the commands lazily, by name
        for name in _imports(ast.parse(path.read_text())):
            assert not any(_under(name, part) for part in PARTS[folder]), (str(path), name)


def test_everything_is_imported_by_its_namespaced_name() -> None:
    """`service`, `workers`, `client` and `migrations` are folders, not import names: installed,
    they are neffcache.service and so on; an import of the bare name works only by accident."""
    for folder in FOLDERS:
        for path in (REPO / folder).rglob("*.py"):
            for name in _imports(ast.parse(path.read_text())):
                assert name.split(".")[0] not in OLD_TOP_LEVEL, (str(path), name)
