"""What `pip install neffcache` puts on a machine.

The wheel is built once from exactly the files the Dockerfile copies into its image (so the
images install from what they are given); then:
- its only top-level import name is `neffcache` (service, workers, client and migrations are
  folders in the repository, installed as neffcache.service and so on);
- the bare install is the client: the `neffcache` command works, none of the server's or compile
  host's packages are there, and the server's commands name the extra to install (exit 2);
- with `[server]`, the console scripts and `python -m` entry points run, and the Alembic
  migrations run from the installed wheel;
- every command an image starts is one the package installs.
The package index pip is configured with resolves the dependencies.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.support.stack import REPO

SERVER_ONLY = ("fastapi", "sqlalchemy", "boto3", "rq", "redis", "torch", "uvicorn", "alembic", "botocore")
SERVER_COMMANDS = ("neffcache-server", "neffcache-worker", "neffcache-admin")
SOURCE_FOLDERS = {"neffcache": "neffcache", "service": "neffcache/service", "workers": "neffcache/workers",
                  "client": "neffcache/client", "migrations": "neffcache/migrations"}


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV") and not k.startswith("NEFFCACHE_")}
    env.update(kwargs.pop("env", {}))
    return subprocess.run(argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, **kwargs)


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """The Dockerfile's `COPY SRC... DEST` instructions from the build context (not --from)."""
    copies = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            copies.append((words[1:-1], words[-1]))
    return copies


def _image_context(dest: Path) -> Path:
    """What the Dockerfile's COPY instructions put in /app, laid out the same way under `dest`."""
    dest.mkdir()
    for sources, target in dockerfile_copies():
        for source in sources:
            into = dest / target / Path(source).name if target.endswith("/") else dest / target
            if (REPO / source).is_dir():
                shutil.copytree(REPO / source, into, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / source, into)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from the files the Dockerfile copies into its image."""
    root = tmp_path_factory.mktemp("wheel")
    source = _image_context(root / "src")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-input", "-w", str(root / "dist"),
                  str(source)], timeout=600, cwd=root)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (found,) = (root / "dist").glob("neffcache-*.whl")
    return found


def test_every_command_an_image_starts_is_installed_by_the_package() -> None:
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    started = [json.loads(line.removeprefix("CMD")) for line in (REPO / "Dockerfile").read_text().splitlines()
               if line.startswith("CMD [")]
    assert started, "the Dockerfile starts no command"
    for argv in started:
        assert argv[0] in scripts, f"the Dockerfile starts {argv[0]!r}, which pyproject does not install"
    assert dockerfile_copies(), "the Dockerfile copies nothing into its image"


def _venv(path: Path) -> Path:
    created = _run([sys.executable, "-m", "venv", str(path)], timeout=300)
    assert created.returncode == 0, created.stderr
    return path / "bin"


def _pip_install(bin_dir: Path, requirement: str, cwd: Path) -> None:
    installed = _run([str(bin_dir / "python"), "-m", "pip", "install", "--no-input", requirement],
                     timeout=840, cwd=cwd)
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]


def test_the_only_top_level_import_name_is_neffcache(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        declared = archive.read(top_level).decode().split()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"neffcache"}
    assert declared == ["neffcache"]


def test_the_wheel_holds_every_source_file(wheel: Path) -> None:
    """Each .py of each part, the migration scripts and the data files, at its namespaced path: a folder missing
    from pyproject's package list would otherwise be missing from every install."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {"neffcache/migrations/script.py.mako", "neffcache/data/sdk_releases.json"}
    # /ui's templates, script and stylesheet (pyproject's package-data).
    expected |= {f"neffcache/service/{path.relative_to(REPO / 'service').as_posix()}"
                 for part in ("ui_templates", "ui_static") for path in (REPO / "service" / part).iterdir()}
    for folder, installed_as in SOURCE_FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" in path.parts or (folder == "neffcache" and path.relative_to(REPO / folder).parts[0]
                                               in {"service", "workers", "client", "migrations"}):
                continue
            expected.add(f"{installed_as}/{path.relative_to(REPO / folder).as_posix()}")
    assert expected - names == set()


@pytest.mark.timeout(900)
def test_the_bare_install_is_the_client_only(wheel: Path, tmp_path: Path) -> None:
    bin_dir = _venv(tmp_path / "venv")
    _pip_install(bin_dir, str(wheel), cwd=tmp_path)

    helped = _run([str(bin_dir / "neffcache"), "--help"], cwd=tmp_path, timeout=60)
    assert helped.returncode == 0, helped.stderr
    assert "pull" in helped.stdout and "compile" in helped.stdout
    as_module = _run([str(bin_dir / "python"), "-m", "neffcache.client.cli", "--help"], cwd=tmp_path, timeout=60)
    assert as_module.returncode == 0 and "pull" in as_module.stdout, as_module.stderr

    # Not installed, and not importable (run from tmp_path, so the checkout is not on sys.path).
    probe = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m)))"
    found = _run([str(bin_dir / "python"), "-c", probe, *SERVER_ONLY], cwd=tmp_path, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [], f"the bare install brought in {found.stdout.strip()}"

    # The server's commands are there, and say what to install: one line, exit 2.
    for command in SERVER_COMMANDS:
        refused = _run([str(bin_dir / command), "--help"], cwd=tmp_path, timeout=60)
        assert refused.returncode == 2, (command, refused.stderr)
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "neffcache[server]" in lines[0] and command in lines[0], refused.stderr

    # The client works without them: a service that is not there is one line and exit 6.
    unreachable = _run([str(bin_dir / "neffcache"), "stats", "--url", "http://127.0.0.1:9"], cwd=tmp_path, timeout=60)
    assert unreachable.returncode == 6, unreachable.stderr
    assert len(unreachable.stderr.strip().splitlines()) == 1 and "Traceback" not in unreachable.stderr


@pytest.mark.timeout(900)
def test_the_server_install_runs_its_commands_and_migrations(wheel: Path, tmp_path: Path) -> None:
    bin_dir = _venv(tmp_path / "venv")
    _pip_install(bin_dir, f"{wheel}[server]", cwd=tmp_path)
    python = str(bin_dir / "python")

    for argv in ([str(bin_dir / "neffcache-server"), "--help"], [str(bin_dir / "neffcache-worker"), "--help"],
                 [str(bin_dir / "neffcache-admin"), "--help"], [python, "-m", "neffcache.service", "--help"],
                 [python, "-m", "neffcache.workers", "--help"], [python, "-m", "neffcache.service.admin", "--help"]):
        ran = _run(argv, cwd=tmp_path, timeout=120)
        assert ran.returncode == 0, (argv, ran.stderr[-2000:])
        assert "usage" in ran.stdout.lower(), (argv, ran.stdout)

    database = tmp_path / "neffcache.db"
    migrated = _run([str(bin_dir / "neffcache-server"), "migrate"], cwd=tmp_path, timeout=120,
                    env={"NEFFCACHE_DATABASE_URL": f"sqlite:///{database}"})
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    with sqlite3.connect(database) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "artifacts", "artifact_files", "blobs", "alembic_version"} <= tables, tables


def test_the_client_imports_nothing_of_the_server() -> None:
    """Every client module, imported in a fresh interpreter of the dev venv (where the server's
    packages are installed): none of them is pulled in, nor the service or worker packages."""
    modules = sorted(
        "neffcache.client." + ".".join(path.relative_to(REPO / "client").with_suffix("").parts)
        for path in (REPO / "client").rglob("*.py") if path.name not in ("__init__.py", "__main__.py")
    )
    forbidden = {*SERVER_ONLY, "starlette", "psycopg"}
    forbidden_packages = ("neffcache.service", "neffcache.workers", "neffcache.migrations", "neffcache.db",
                          "neffcache.storage")
    probe = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(forbidden)!r}\n"
        f"    or m.startswith({forbidden_packages!r}))))\n"
    )
    found = _run([sys.executable, "-c", probe], cwd=REPO, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split() == [], f"the client imported {found.stdout.strip()}"
