"""`prewarm`: before an SDK upgrade, build what a deployment uses again for the new toolchain,
and report how ready it is; and the readiness `lock --compiler` requires of every entry."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from neffcache.client import output
from neffcache.client.cli import session
from neffcache.client.cli.exits import Finished
from neffcache.client.cli.options import JsonOpt, SpecOpt, TokenOpt, UrlOpt
from neffcache.client.cli.progress import follow, upload_missing
from neffcache.client.prewarm import source_of, spec_sources, state_text, totals, with_job_ended
from neffcache.errors import EXIT_COMPILE_FAILED, EXIT_MISS, NotFound, UsageError

if TYPE_CHECKING:
    from neffcache.client.api import NeffcacheClient
    from neffcache.client.pull import Wanted
    from neffcache.client.specs import SpecEntry

MAX_TOP = 500  # the service's limit on entries (neffcache.spec.MAX_PREWARM_ENTRIES)


def prewarm_cmd(
    to: Annotated[str, typer.Option("--to", metavar="COMPILER_VERSION", help="The new compiler: neuronx-cc's "
                                       "version (torch-neuronx's for torch-neuronx entries; torch's for inductor).",
                                       show_default=False)],
    runtime: Annotated[str | None, typer.Option("--runtime", metavar="VERSION", help="The new runtime (default: "
                                                   "the SDK release's; for inductor the torch version).",
                                                   show_default=False)] = None,
    lock: Annotated[Path | None, typer.Option("--lock", metavar="FILE", help="The artifacts this lock file names.",
                                                 show_default=False)] = None,
    spec: SpecOpt = None,
    top: Annotated[int | None, typer.Option("--top", metavar="N", min=1, max=MAX_TOP, help="The N artifacts with "
                                               "the most lookup hits in your namespaces.", show_default=False)] = None,
    since: Annotated[float | None, typer.Option("--since", metavar="DAYS", min=0.001, max=366,
                                                   help="With --top: hits of the last DAYS days [default 7].",
                                                   show_default=False)] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the compiles until none is running.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", metavar="S", help="With --wait: stop waiting after S "
                                                     "seconds (the compiles go on).", show_default=False)] = None,
    interval: Annotated[float, typer.Option("--poll-interval", metavar="S", help="Seconds between polls.")] = 1.0,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Build a deployment's artifacts again for a new toolchain, before the upgrade: each source (a
    lock file's artifacts, a spec file's entries, or the most used artifacts) with the same model,
    inputs, target and flags, the new compiler version, deduplicated against what exists.

    Each entry is ready, compiling, failed, unbuildable (no live worker has the toolchain) or refused
    (its spec error). Exit 0 when all are ready, 1 when any failed, 4 when any is not ready yet."""
    given = [name for name, value in (("--lock", lock), ("--spec", spec), ("--top", top)) if value]
    if len(given) != 1:
        raise UsageError("give one of --lock FILE, --spec FILE and --top N" +
                         (f", not {' and '.join(given)}" if given else ""))
    if since is not None and top is None:
        raise UsageError("--since DAYS counts the hits of --top N: give it with --top")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout:g}")
    with session.open_client(url, token) as client:
        if lock is not None:
            from neffcache.client.lockfile import read_lock

            body = client.prewarm(to, runtime, keys=[item.key for item in read_lock(lock)])
        elif spec:
            entries = _hashed(spec)
            upload_missing(client, entries)  # a spec's model may never have been uploaded
            body = client.prewarm(to, runtime, specs=spec_sources(entries))
        else:
            assert top is not None
            body = client.prewarm(to, runtime, top={"n": top, "since_days": 7.0 if since is None else since})
        entries_out = body["entries"]
        if wait or timeout:
            entries_out = _followed(client, entries_out, timeout, max(interval, 0.05))
    counted = totals(entries_out)
    if json_out:
        output.print_json({**body, "entries": entries_out, "totals": counted})
    else:
        output.table(None, ["source", "key", "status"],
                     [[source_of(e), e.get("key") or "", state_text(e)] for e in entries_out])
        output.say(f"{_toolchain(to, runtime)}: " + ", ".join(f"{n} {s}" for s, n in counted.items() if n)
                   + f" (of {len(entries_out)})")
    _conclude(counted, len(entries_out), _toolchain(to, runtime))


def _hashed(spec: list[Path]) -> list[SpecEntry]:
    from neffcache.client.specs import hash_models, load_spec_files  # imported when needed: see the package docstring

    entries = load_spec_files(spec)
    hash_models(entries)
    return entries


def _toolchain(compiler: str, runtime: str | None) -> str:
    return f"compiler {compiler}" + (f", runtime {runtime}" if runtime else "")


def _followed(client: NeffcacheClient, entries: list[dict[str, Any]], timeout: float | None,
              interval: float) -> list[dict[str, Any]]:
    """Follow every compiling entry's job (as `compile --wait` does, its progress on stderr) until
    none is running or the time is up; each entry then reads as its job ended."""
    jobs: dict[str, dict[str, Any]] = {}  # one followed result per job: entries of one key share it
    for e in entries:
        if e["status"] == "compiling" and e.get("job_id"):
            jobs.setdefault(e["job_id"], {"label": source_of(e), "key": e["key"], "status": "queued",
                                          "job": {"id": e["job_id"]}})
    follow(client, list(jobs.values()), timeout, interval)
    return [with_job_ended(e, jobs[e["job_id"]]["job"], jobs[e["job_id"]]["status"]) if e.get("job_id") in jobs
            else e for e in entries]


def _conclude(counted: dict[str, int], total: int, toolchain: str) -> None:
    if counted["failed"]:
        raise Finished(EXIT_COMPILE_FAILED, f"neffcache: {counted['failed']} of {total} failed for {toolchain}; "
                       "see `neffcache logs JOB`")
    waiting = total - counted["ready"]
    if waiting:
        raise Finished(EXIT_MISS, f"neffcache: {waiting} of {total} not ready for {toolchain}")


def ready_for_toolchain(client: NeffcacheClient, entries: list[SpecEntry], compiler: str, runtime: str | None,
                        outcome: str) -> list[Wanted]:
    """Each spec entry re-keyed for the toolchain, as the artifact to lock: asked of POST
    /v1/prewarm without submitting anything, so the keys are exactly those `prewarm` builds. Any
    entry not ready: its state on a line of its own (stderr), then NotFound (exit 4)."""
    from neffcache.client.pull import add_wanted

    answer = client.prewarm(compiler, runtime, specs=spec_sources(entries), submit=False)["entries"]
    not_ready = [(entry, e) for entry, e in zip(entries, answer, strict=True) if e["status"] != "ready"]
    if not_ready:
        for entry, e in not_ready:
            output.say(f"{entry.label}: {state_text(e)}")
        raise NotFound(f"{len(not_ready)} of {len(entries)} not ready for {_toolchain(compiler, runtime)}, "
                       f"{outcome}", missing=[{"entry": entry.label, **e} for entry, e in not_ready])
    wanted: dict[str, Wanted] = {}
    for entry, e in zip(entries, answer, strict=True):
        artifact = wanted[e["key"]].artifact if e["key"] in wanted else client.artifact(e["key"])
        add_wanted(wanted, e["key"], artifact, entry.label, entry.name)
    return list(wanted.values())
