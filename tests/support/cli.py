"""Running the `neffcache` command in tests: as a subprocess, the way CI and pods run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.stack import REPO


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def one_line_error(self) -> str:
        """stderr is exactly one line, with no traceback."""
        lines = self.stderr.strip().splitlines()
        assert len(lines) == 1, self.stderr
        assert "Traceback" not in self.stderr
        return lines[0]

    def last_stderr_line(self) -> str:
        return self.stderr.strip().splitlines()[-1]


def client_env(url: str, token: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
    env.update({"NEFFCACHE_URL": url, "COLUMNS": "250", "PYTHONUNBUFFERED": "1"})
    if token:
        env["NEFFCACHE_TOKEN"] = token
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 180) -> Result:
    proc = subprocess.run([sys.executable, "-m", "neffcache.client.cli", *args], env=env,
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_cli_into_closed_pipe(args: list[str], env: dict[str, str], timeout: float = 180) -> Result:
    """Run the command with stdout a real pipe whose reader is already gone (`neffcache ... |
    head` once head has exited): every write to stdout fails with EPIPE. stdout is "" here."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "neffcache.client.cli", *args], env=env, cwd=REPO,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    return Result(proc.returncode, "", proc.stderr)


def cli_runner(url: str, token: str):
    """cli(*args, cwd=, timeout=, **env) -> Result against the service at `url` with `token`."""

    def call(*args: str, cwd: Path | None = None, timeout: float = 180, **extra_env: str) -> Result:
        return run_cli(list(args), client_env(url, token, **extra_env), cwd=cwd, timeout=timeout)

    return call


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def files_under(path: Path) -> list[Path]:
    """Every file below `path` (none when it does not exist): what a pull left behind."""
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []
