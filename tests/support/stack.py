"""A running neffcache for the tests: the real service (uvicorn) and real workers, as
subprocesses, against the session's database, Redis and object store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
DOUBLE_BIN = REPO / "tests" / "doubles" / "bin"
# The admin token the stack makes right after the service starts; from then on the service
# refuses the bootstrap admin token (an admin token exists), so requests carry this one.
SESSION_ADMIN = "test-session-admin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings_env(values: dict[str, Any]) -> dict[str, str]:
    """Settings fields -> NEFFCACHE_* environment variables."""
    return {f"NEFFCACHE_{k.upper()}": str(v) for k, v in values.items() if v is not None}


class Process:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL the whole process group: a host dying, not a shutdown."""
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self, grace_s: float = 10.0) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


class Stack:
    def __init__(self, settings: dict[str, Any], log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self.url = ""
        self.admin_token: str | None = None  # create_admin_token's; until then the bootstrap one

    @property
    def auth_headers(self) -> dict[str, str]:
        token = self.admin_token or self.settings.get("bootstrap_admin_token")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def create_admin_token(self, name: str = SESSION_ADMIN) -> str:
        """An admin token made with the real `neffcache-admin`, used by auth_headers from now on."""
        self.admin_token = self.create_token(name, "admin")
        return self.admin_token

    def create_token(self, name: str, scope: str, namespaces: tuple[str, ...] = ()) -> str:
        """A token made with the real `neffcache-admin token create` (every namespace unless given)."""
        where = [arg for ns in namespaces for arg in ("--namespace", ns)]
        made = subprocess.run(
            [sys.executable, "-m", "neffcache.service.admin", "token", "create", "--name", name, "--scope", scope,
             *where, "--json"], env=self.env(), capture_output=True, text=True, check=True,
        )
        token: str = json.loads(made.stdout)["token"]
        return token

    def env(self, overrides: dict[str, Any] | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
        env.update(settings_env({**self.settings, **(overrides or {})}))
        env["PATH"] = f"{DOUBLE_BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra or {})
        return env

    def start_server(self, timeout_s: float = 60, name: str = "server") -> str:
        """Start an API process and return its URL; the first one's is the stack's (`url`)."""
        port = free_port()
        proc = Process(name, [sys.executable, "-m", "neffcache.service", "serve", "--port", str(port)],
                       self.env(), self.log_dir)
        self.processes.append(proc)
        url = f"http://127.0.0.1:{port}"
        self.url = self.url or url
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"service exited:\n{proc.log_tail()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"service did not answer within {timeout_s} s:\n{proc.log_tail()}")

    def start_worker(self, name: str, overrides: dict[str, Any] | None = None,
                     extra_env: dict[str, str] | None = None, wait_registered: bool = True) -> Process:
        proc = Process(name, [sys.executable, "-m", "neffcache.workers"], self.env(overrides, extra_env), self.log_dir)
        self.processes.append(proc)
        if wait_registered:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if not proc.alive():
                    raise RuntimeError(f"worker {name} exited:\n{proc.log_tail()}")
                workers = httpx.get(f"{self.url}/v1/workers", headers=self.auth_headers, timeout=5).json()["workers"]
                if any(w["pid"] == proc.pid and w["state"] != "stopped" for w in workers):
                    return proc
                time.sleep(0.2)
            raise RuntimeError(f"worker {name} did not register:\n{proc.log_tail()}")
        return proc

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
