"""The key, flag, NEFF-header, toolchain and digest modules are pure: standard library only, no
I/O of their own; the client never imports the server side; the workers have no import circle."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.support.stack import REPO

PURE = {
    "neffcache/key.py": {"neffcache.errors", "neffcache.flags", "neffcache.toolchain"},
    "neffcache/flags.py": {"neffcache.errors", "neffcache.toolchain", "neffcache.flags_common",
                           "neffcache.flags_inductor"},
    "neffcache/flags_common.py": {"neffcache.errors"},
    "neffcache/flags_inductor.py": {"neffcache.errors", "neffcache.toolchain", "neffcache.flags_common"},
    "neffcache/neff.py": {"neffcache.errors"},
    "neffcache/toolchain.py": set(),
    "neffcache/digests.py": set(),
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


def _module_names() -> dict[str, Path]:
    """Every module of the house by its installed name (neffcache.workers.backends.base, ...)."""
    packages = {"neffcache": "neffcache", **{f: f"neffcache.{f}" for f in OLD_TOP_LEVEL}}
    found: dict[str, Path] = {}
    for folder, package in packages.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            if folder == "neffcache" and parts[0] in OLD_TOP_LEVEL:
                continue
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _imported_modules(tree: ast.AST) -> set[str]:
    """What a module imports, anywhere in it (a function-level import closes a circle too);
    `from package import module` counts as importing package.module."""
    found = _imports(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_backend_base_imports_no_backend() -> None:
    """workers/backends/registry.py picks the backend; base.py, which every backend imports,
    imports none of them (nor anything else of the backends package)."""
    tree = ast.parse((REPO / "workers/backends/base.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    backends = sorted(n for n in _imported_modules(tree) if _under(n, "neffcache.workers.backends"))
    assert backends == []


def test_no_import_circle_in_the_workers() -> None:
    """The workers' import graph has no circle (a lazy import inside a function counts)."""
    modules = {name: path for name, path in _module_names().items() if _under(name, "neffcache.workers")}
    assert "neffcache.workers.backends.registry" in modules
    graph = {name: {m for m in _imported_modules(ast.parse(path.read_text())) if m in modules and m != name}
             for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(name):], name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
