"""Compile jobs: `jobs`, `logs` (--follow a running one), `cancel`."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from neffcache.client import output
from neffcache.client.cli import session
from neffcache.client.cli.exits import Finished
from neffcache.client.cli.options import JsonOpt, LimitOpt, TokenOpt, UrlOpt
from neffcache.client.cli.progress import FINAL_STATES
from neffcache.errors import EXIT_COMPILE_FAILED, NotFound, UsageError

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
JobArg = Annotated[str, typer.Argument(metavar="JOB", help="Job id.", show_default=False)]


def jobs_cmd(
    state: Annotated[str | None, typer.Option("--state", metavar="STATE",
                                                 help="queued running succeeded failed cancelled.",
                                                 show_default=False)] = None,
    limit: LimitOpt = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", metavar="CURSOR", show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Compile jobs, newest first."""
    if state and state not in STATES:
        raise UsageError(f"--state {state!r}: use queued, running, succeeded, failed or cancelled")
    with session.open_client(url, token) as client:
        body = client.jobs(state=state, limit=limit, cursor=cursor)
    if json_out:
        output.print_json(body)
        return
    rows = [[j["id"], output.short(j["key"]), j["state"], j.get("failure_class") or "",
             f"{j.get('attempts')}/{j.get('max_attempts')}", j.get("target"),
             f"{j['compiler']['name']}=={j['compiler'].get('version')}", j.get("requested_by") or "",
             output.when(j.get("created_at"))] for j in body["jobs"]]
    if not rows:
        output.say("no jobs" + (f" in state {state}" if state else ""))
        return
    output.table(None, ["job", "key", "state", "failure", "attempt", "target", "compiler", "by", "created"], rows)
    if body.get("next_cursor"):
        output.say(f"more: neffcache jobs --cursor {body['next_cursor']}")


def logs_cmd(
    job_id: JobArg,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Poll until the job ends; exit 1 if it failed.")]
    = False,
    interval: Annotated[float, typer.Option("--poll-interval", metavar="S")] = 1.0,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """The compiler log of a job's last attempt."""
    with session.open_client(url, token) as client:
        if not follow:
            text = client.job_log(job_id)
            if json_out:
                output.print_json({"job": job_id, "log": text})
            else:
                output.write(text if text.endswith("\n") or not text else text + "\n")
            return
        printed = ""
        last_state, attempt, offset = None, None, 0
        while True:
            job = client.job(job_id)
            job_id = job.get("id") or job_id  # the whole id, where a prefix was given
            if job["state"] != last_state:
                output.say(f"job {job_id}: {job['state']} (attempt {job.get('attempts')}/{job.get('max_attempts')})")
                last_state = job["state"]
            if attempt is not None and job.get("attempts") != attempt and job["state"] == "running":
                offset = 0  # a new attempt writes a new log
                if not json_out:
                    output.write(f"\n--- attempt {job.get('attempts')} ---\n")
            attempt = job.get("attempts")
            try:
                chunk = client.job_log_from(job_id, offset)
            except NotFound:  # no log yet
                chunk = None
            if chunk is not None:
                text = (
                    f"[... {chunk.skipped} bytes not kept while running ...]\n" if chunk.skipped else ""
                ) + chunk.text
                if text and not json_out:
                    output.write(text)
                printed += text
                offset = chunk.end
            if job["state"] in FINAL_STATES and (chunk is None or chunk.complete):
                break
            time.sleep(max(interval, 0.05))
    if json_out:
        output.print_json({"job": job_id, "state": job["state"], "failure_class": job.get("failure_class"),
                           "log": printed})
    elif printed and not printed.endswith("\n"):
        output.write("\n")
    if not printed and not json_out:
        output.say(f"job {job_id} ended {job['state']} without a log" +
                   (f": {job['message']}" if job.get("message") else ""))
    if job["state"] != "succeeded":
        raise Finished(EXIT_COMPILE_FAILED)


def cancel_cmd(
    job_id: JobArg,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a queued job, or ask the worker running it to stop."""
    with session.open_client(url, token) as client:
        job, at_once = client.cancel_job(job_id)
    if json_out:
        output.print_json(job)
        return
    job_id = job.get("id") or job_id  # the whole id, where a prefix was given
    output.line(f"job {job_id} cancelled" if at_once else f"job {job_id} is running: its worker was asked to stop it")
