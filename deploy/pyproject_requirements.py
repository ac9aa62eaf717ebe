"""Print the pinned requirements of pyproject.toml's extras, one a line, for an image's
dependency layer.

    python deploy/pyproject_requirements.py pyproject.toml server [--without torch]

The project's own extras (`neffcache[server]` inside `worker`) are expanded, the project itself
is left out: the image installs its dependencies from this list in one layer and the package
itself (`pip install --no-deps`) in a later one, so a code change does not reinstall them.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def requirements(project: dict, extras: list[str]) -> list[str]:
    name = project["name"]
    optional = project.get("optional-dependencies", {})
    found: list[str] = list(project.get("dependencies", []))
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"pyproject_requirements: no extra {extra!r} in pyproject.toml")
        seen.add(extra)
        for requirement in optional[extra]:
            match = _NAME.match(requirement)
            if match and match.group(1) == name:  # the project's own extras: expand them
                pending.extend(e.strip() for e in (match.group(2) or "").split(",") if e.strip())
            else:
                found.append(requirement)
    return list(dict.fromkeys(found))


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    return match.group(1).lower().replace("_", "-") if match else requirement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--without", action="append", default=[], metavar="NAME",
                        help="leave this package out (installed on its own, e.g. torch from a CPU wheel)")
    args = parser.parse_args(argv)
    project = tomllib.loads(args.pyproject.read_text())["project"]
    left_out = {name.lower() for name in args.without}
    for requirement in requirements(project, args.extras):
        if requirement_name(requirement) not in left_out:
            print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
