"""deploy/compose.yaml run by Debian's docker-compose for the container test: a project of its own,
free ports, an env file with a bootstrap admin token, and a teardown that leaves nothing behind.

Plain Python, no pytest: tests/containers/ drives it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.seaweedfs import pick_ports
from tests.support.stack import REPO

COMPOSE_FILE = REPO / "deploy" / "compose.yaml"
IMAGES_SCRIPT = REPO / "deploy" / "images.sh"
# The variables of compose.yaml that name a port (SeaweedFS's gRPC ports are these + 10000:
# pick_ports keeps those free too).
PORT_VARIABLES = ("NEFFCACHE_POSTGRES_PORT", "NEFFCACHE_REDIS_PORT", "NEFFCACHE_S3_PORT",
                  "NEFFCACHE_SEAWEEDFS_MASTER_PORT", "NEFFCACHE_SEAWEEDFS_VOLUME_PORT",
                  "NEFFCACHE_SEAWEEDFS_FILER_PORT", "NEFFCACHE_SERVICE_A_PORT", "NEFFCACHE_SERVICE_B_PORT")
SERVICES = ("service-a", "service-b")
WORKERS = ("worker-a", "worker-b")


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n"
                             f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


class Phases:
    """How long each phase took, printed as it ends and all together at the end."""

    def __init__(self) -> None:
        self.taken: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.taken.append((name, time.monotonic() - started))
            print(f"[containers] {name}: {self.taken[-1][1]:.1f} s", flush=True)

    def summary(self) -> str:
        width = max(len(name) for name, _ in self.taken)
        return "\n".join(f"  {name:<{width}}  {seconds:7.1f} s" for name, seconds in self.taken)


class ComposeStack:
    def __init__(self, workdir: Path, overrides: dict[str, str] | None = None) -> None:
        self.project = f"neffcache-ct-{secrets.token_hex(3)}"
        self.admin_token = f"nfc_bootstrap-{secrets.token_hex(12)}"
        env_file = workdir / "neffcache.env"
        env_file.write_text(f"NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN={self.admin_token}\n")
        env_file.chmod(0o600)
        self.ports = dict(zip(PORT_VARIABLES, (str(p) for p in pick_ports(len(PORT_VARIABLES))), strict=True))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
        self.env.update(self.ports, NEFFCACHE_ENV_FILE=str(env_file), **(overrides or {}))

    def url(self, service: str = "service-a") -> str:
        variable = "NEFFCACHE_" + service.replace("-", "_").upper() + "_PORT"
        return f"http://127.0.0.1:{self.ports[variable]}"

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return run(["docker-compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args], self.env, timeout)

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"

    def exec(self, service: str, *argv: str) -> str:
        return run(["docker", "exec", self.container(service), *argv]).stdout

    def health(self, service: str) -> str:
        state = json.loads(run(["docker", "inspect", "-f", "{{json .State}}", self.container(service)]).stdout)
        return state.get("Health", {}).get("Status") or state["Status"]

    def wait_healthy(self, services: tuple[str, ...], timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = {s: self.health(s) for s in services}
            if all(state == "healthy" for state in states.values()):
                return
            time.sleep(1)
        raise AssertionError(f"not healthy within {timeout_s} s: {states}\n{self.logs()}")

    def wait_workers(self, hosts: tuple[str, ...], timeout_s: float = 120) -> None:
        """Until a live worker of each host has registered with this stack's database."""
        deadline = time.monotonic() + timeout_s
        live: set[str] = set()
        while time.monotonic() < deadline:
            workers = httpx.get(f"{self.url()}/v1/workers", headers=self.admin_headers, timeout=10).json()["workers"]
            live = {w["host"] for w in workers if w["state"] in ("idle", "busy")}
            if set(hosts) <= live:
                return
            time.sleep(0.5)
        raise AssertionError(f"workers {hosts} not live within {timeout_s} s (live: {live})\n{self.logs()}")

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def logs(self, *services: str) -> str:
        return self.compose("logs", "--no-color", "--tail", "30", *services, timeout=60).stdout[-8000:]

    def up(self) -> None:
        self.compose("up", "-d")
        self.wait_healthy(SERVICES)
        # What answers on the ports is this project's: its containers are the healthy ones, and
        # the bootstrap token only this project's env file holds is accepted.
        for service in SERVICES:
            r = httpx.get(f"{self.url(service)}/v1/workers", headers=self.admin_headers, timeout=10)
            assert r.status_code == 200, f"{service}: {r.status_code} {r.text}"

    def down(self) -> list[str]:
        """Remove the project's containers, networks and volumes; what is left of it, if anything."""
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20")
        label = f"label=com.docker.compose.project={self.project}"
        left = []
        for kind in ("ps -a", "volume ls", "network ls"):
            found = run(["docker", *kind.split(), "-q", "--filter", label]).stdout.split()
            left += [f"{kind.split()[0]} {name}" for name in found]
        return left
