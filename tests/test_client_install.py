"""`pip install .` with no extras is the client: the `neffcache` command and nothing of the server.

A fresh virtualenv, the project installed from a copy of this checkout (the package index pip is
configured with resolves the dependencies), then: the command runs, and none of the server's or
the compile host's packages can be imported there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.stack import REPO

SERVER_ONLY = ("fastapi", "sqlalchemy", "boto3", "rq", "redis", "torch", "uvicorn", "alembic", "botocore")
SKIP = {".venv", ".git", "__pycache__", ".pytest_cache", "build", "dist", "var"}


def _copy_checkout(dest: Path) -> Path:
    """The source tree without virtualenvs, caches or build leftovers (pip builds in place)."""
    def ignore(folder: str, names: list[str]) -> set[str]:
        return {n for n in names if n in SKIP or n.endswith(".egg-info")}

    return Path(shutil.copytree(REPO, dest, ignore=ignore))


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, **kwargs)


@pytest.mark.timeout(900)
def test_bare_install_is_the_client_only(tmp_path: Path) -> None:
    source = _copy_checkout(tmp_path / "src")
    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    installed = _run([str(python), "-m", "pip", "install", "--no-input", str(source)], timeout=840,
                     cwd=tmp_path)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    command = venv / "bin" / "neffcache"
    helped = _run([str(command), "--help"], cwd=tmp_path, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "pull" in helped.stdout and "compile" in helped.stdout

    # Not installed, and not importable (run from tmp_path, so the checkout is not on sys.path).
    probe = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    found = _run([str(python), "-c", probe, *SERVER_ONLY], cwd=tmp_path, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [], f"the bare install brought in {found.stdout.strip()}"
    shown = _run([str(python), "-m", "pip", "show", *SERVER_ONLY], cwd=tmp_path, timeout=60)
    assert "Name:" not in shown.stdout, shown.stdout

    # The client works without them: a service that is not there is one line and exit 6.
    unreachable = _run([str(command), "stats", "--url", "http://127.0.0.1:9"], cwd=tmp_path, timeout=60)
    assert unreachable.returncode == 6, unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1 and "Traceback" not in unreachable.stderr


def test_the_client_imports_nothing_of_the_server() -> None:
    """Every client module, imported in a fresh interpreter of the dev venv (where the server's
    packages are installed): none of them is pulled in, nor the service or worker packages."""
    modules = ["client.cli", "client.api", "client.pull", "client.specs", "client.runtime", "client.config",
               "client.output"]
    forbidden = {*SERVER_ONLY, "service", "workers", "starlette", "psycopg"}
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(forbidden)!r})))\n"
    )
    found = _run([sys.executable, "-c", probe], cwd=REPO, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [], f"the client imported {found.stdout.strip()}"
