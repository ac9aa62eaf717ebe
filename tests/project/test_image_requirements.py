"""The dependency layers of the images (Dockerfile, deploy/pyproject_requirements.py) install
exactly pyproject.toml's pins: the server's for the service image, the worker extra's for the
worker image with torch left out (the CPU wheel installs on its own), never the project itself."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from tests.support.stack import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
BARE = PYPROJECT["dependencies"]
SERVER = PYPROJECT["optional-dependencies"]["server"]


def listed(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(REPO / "deploy" / "pyproject_requirements.py"),
                           str(REPO / "pyproject.toml"), *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


@pytest.mark.parametrize(("args", "expected"), [
    (("server",), BARE + SERVER),
    (("worker", "--without", "torch"), BARE + ["numpy==2.4.6"] + SERVER),
    (("worker",), BARE + ["torch==2.13.0", "numpy==2.4.6"] + SERVER),
    ((), BARE),
])
def test_the_image_layers_install_pyprojects_pins(args: tuple[str, ...], expected: list[str]) -> None:
    assert listed(*args) == expected


def test_the_dockerfile_installs_the_lists_the_script_makes() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pyproject_requirements.py pyproject.toml server > server.txt" in dockerfile
    assert "pyproject_requirements.py pyproject.toml worker --without torch > worker.txt" in dockerfile
    assert "'torch==2.13.0+cpu'" in dockerfile  # the CPU wheel, by its local version


def test_an_unknown_extra_is_refused_by_name() -> None:
    done = subprocess.run([sys.executable, str(REPO / "deploy" / "pyproject_requirements.py"),
                           str(REPO / "pyproject.toml"), "gpu"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "no extra 'gpu'" in done.stderr
