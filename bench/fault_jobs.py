"""bench/faults.py's job scenarios, each a function of the run: `queue` (Redis lost with jobs
queued and mid-compile), `kill` (workers SIGKILLed mid-compile) and `s3` (the object store down
for longer than the backoff). See bench/faults.py's docstring for what each must show."""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from fault_support import HANG_COMPILER, HANG_RUNTIME, alive, group_members, processes_under, say, wait_for

from neffcache.workers.backends.base import LOG_FILE
from neffcache.workers.backends.process import RUN_MARKER, WORKER_DIR_PREFIX
from tests.support.stack import Process

if TYPE_CHECKING:
    from faults import Run


def scenario_queue(run: Run) -> dict[str, Any]:
    assert run.stack is not None and run.api is not None
    half = max(1, run.args.jobs // 2)
    say(f"[queue] {run.args.jobs} jobs queued with no worker running; Redis killed and restarted empty; "
        f"then {half} more with the workers running, Redis killed again mid-compile")
    jobs = run.submit(run.api, run.args.jobs, "double:sleep=0.5")
    queue = jobs[0]["queue"]
    before = run.queued_in_redis(queue)
    how = run.restart_redis()
    after = run.queued_in_redis(queue)
    say(f"  {how}: {before} jobs in the queue before, {after} after")
    record = run.work / "queue-record.jsonl"
    started = time.monotonic()
    workers = run.start_workers(run.stack, "queue-worker", 2, record)
    final = run.wait_jobs(run.api, jobs, run.args.deadline_s)
    say(f"  all final {time.monotonic() - started:.1f} s after the workers started")
    # Again, under running workers: one job mid-compile, the others waiting in Redis.
    more = run.submit(run.api, half, "double:sleep=2")
    running = wait_for(lambda: any(run.api.get(f"/v1/jobs/{j['id']}").json()["state"] == "running"
                                   for j in more), 60)
    run.restart_redis()
    say(f"  Redis killed again with the workers running (a job was mid-compile: {bool(running)})")
    final.update(run.wait_jobs(run.api, more, run.args.deadline_s))
    time.sleep(3)  # a few more queue checks: a job sent twice would compile again now
    alive_after = [w.pid for w in workers if w.alive()]
    for w in workers:
        w.stop()
    inputs = record.with_name(record.name + ".inputs")
    compiles = collections.Counter(inputs.read_text().split() if inputs.exists() else [])
    jobs += more
    twice = [j["id"] for j in jobs if compiles[j["model_digest"].split(":")[1]] > 1]
    run.figures.compiled_twice += len(twice)
    details = run.count_jobs("queue", jobs, final)
    say(f"  compiled more than once: {len(twice)}; workers still running after the second loss: "
        f"{len(alive_after)} of {len(workers)}")
    return {**details, "redis": how, "queued_in_redis_before": before, "queued_in_redis_after": after,
            "compiled_twice": twice, "workers_alive_after_second_loss": len(alive_after)}

# --- scenario: workers killed mid-compile ------------------------------------------------------
def scenario_kill(run: Run) -> dict[str, Any]:
    assert run.stack is not None and run.api is not None
    scratch = run.work / "scratch"
    say(f"[kill] {run.args.jobs} jobs of 4 s on 2 workers; {run.args.kills} worker process groups SIGKILLed "
        "mid-compile (the first one's compiler has started a helper process, and hangs)")
    workers = run.start_workers(run.stack, "kill-worker", 2)
    hang_job = None
    if run.args.kills:
        # A compile that starts a helper process (the double's `hang`), on a toolchain of its own
        # so that only this worker takes it: the helper must die with the compiler too.
        workers += run.start_workers(run.stack, "kill-hang-worker", 1, worker_runtime_version=HANG_RUNTIME,
                                      extra={"NEURONX_CC_DOUBLE_VERSION": HANG_COMPILER})
        hang_job = run.submit(run.api, 1, "double:hang", compiler=HANG_COMPILER, runtime=HANG_RUNTIME)[0]
    jobs = run.submit(run.api, run.args.jobs, "double:sleep=4")
    kills: list[dict[str, Any]] = []
    for n in range(run.args.kills):
        needle = "helper pid" if n == 0 else "compiling, step"
        busy = wait_for(lambda needle=needle: busy_worker(workers, scratch, needle), 60, 0.1)
        if not busy:
            say(f"  kill {n + 1}: no worker was mid-compile within 60 s; {n} kills done")
            break
        victim, folder, pgid = busy
        group = group_members(pgid)
        compiler_pids = processes_under(folder)
        victim.kill()  # SIGKILL of the worker's whole process group: a host losing the worker
        time.sleep(run.args.settle_s)
        left = sorted({p for p in [*group, *compiler_pids] if alive(p)} | set(group_members(pgid)))
        workers.remove(victim)
        replacement = run.start_workers(run.stack, "kill-replacement", 1)[0]
        workers.append(replacement)
        scratch_left = folder.exists()
        run.figures.orphans += len(left)
        run.figures.scratch_left += int(scratch_left)
        kills.append({"worker_pid": victim.pid, "compile": needle, "compile_group": pgid, "group_before": group,
                      "alive_after_settle": left, "scratch_folder": folder.name,
                      "scratch_left_after_replacement": scratch_left, "replacement_pid": replacement.pid})
        say(f"  kill {n + 1}: worker {victim.pid} (compile group {pgid}: {len(group)} processes"
            f"{', a helper among them' if n == 0 else ''}); {len(left)} alive {run.args.settle_s:g} s later; "
            f"scratch folder {'still there' if scratch_left else 'removed'} once worker {replacement.pid} started")
    final = run.wait_jobs(run.api, jobs, run.args.deadline_s)
    if hang_job is not None:  # it never ends by itself
        run.api.post(f"/v1/jobs/{hang_job['id']}/cancel")
        run.wait_jobs(run.api, [hang_job], 30)
    for w in workers:
        w.stop()
    stray = processes_under(scratch)
    run.figures.orphans += len(stray)
    if stray:
        say(f"  processes still running under {scratch} after every worker stopped: {stray}")
    details = run.count_jobs("kill", jobs, final)
    return {**details, "kills": kills, "stray_compilers_after_stop": stray}

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
def scenario_s3(run: Run) -> dict[str, Any]:
    assert run.stack is not None and run.api is not None and run.weed is not None
    assert run.forwarder is not None
    say(f"[s3] {run.args.jobs} jobs of 2 s on 2 workers; SeaweedFS stopped for {run.args.outage_s:g} s "
        f"mid-compile (storage backoff {run.args.storage_backoff_s:g} s, doubling, capped at "
        f"{2 * run.args.storage_backoff_s:g} s)")
    workers = run.start_workers(run.stack, "s3-worker", 2)
    jobs = run.submit(run.api, run.args.jobs, "double:sleep=2")
    running = wait_for(lambda: any(run.api.get(f"/v1/jobs/{j['id']}").json()["state"] == "running"
                                   for j in jobs), 60)
    began = time.monotonic()
    run.weed.stop()
    states_seen: set[str] = set()
    while time.monotonic() - began < run.args.outage_s:
        try:
            states_seen |= {w["state"] for w in run.api.get("/v1/workers").json()["workers"]
                            if w["pid"] in {p.pid for p in workers}}
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    run.weed.start()
    run.forwarder.retarget(run.weed.ports["s3"])
    outage = time.monotonic() - began
    # How many attempts each job had made when S3 answered again: an attempt numbered above that
    # began after S3 was back, and any such attempt but a job's successful last one was spent
    # on an object store that answers (the main README: an outage spends attempts only of the
    # jobs it breaks mid-way).
    when_back = {j["id"]: run.api.get(f"/v1/jobs/{j['id']}").json()["attempts"] for j in jobs}
    say(f"  S3 down for {outage:.1f} s (a job was running when it stopped: {bool(running)}); worker states "
        f"seen meanwhile: {sorted(states_seen)}")
    final = run.wait_jobs(run.api, jobs, run.args.deadline_s)
    for w in workers:
        w.stop()
    details = run.count_jobs("s3", jobs, final)
    spent: dict[str, dict[str, Any]] = {}
    for job in jobs:
        last = final.get(job["id"], {})
        failed_after = (last.get("attempts") or 0) - when_back[job["id"]] - (last.get("state") == "succeeded")
        if failed_after > 0:
            spent[job["id"]] = {"attempts_when_s3_was_back": when_back[job["id"]], "attempts": last["attempts"],
                                "failed_after": failed_after, "state": last.get("state"),
                                "message": last.get("message")}
    wasted = sum(v["failed_after"] for v in spent.values())
    run.figures.spent_after_outage += wasted
    say(f"  attempts begun after S3 answered again that failed: {wasted} (of {len(spent)} jobs)")
    retried = sum(1 for j in final.values() if (j.get("attempts") or 0) > 1)
    return {**details, "outage_s": round(outage, 1), "worker_states_during_outage": sorted(states_seen),
            "jobs_retried": retried, "attempts_when_s3_was_back": when_back,
            "attempts_failed_after_s3_was_back": spent}

# --- scenario: property test of the HTTP API ------------------------------------------------------
