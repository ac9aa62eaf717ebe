"""`neffcache`: compile, look up and pull artifacts; inspect the cache.

Exit codes (every command):
  0 success
  1 a compile failed (or was cancelled)
  2 bad usage, a bad spec file, or a spec the service refused
  3 timed out (--wait --timeout)
  4 miss or not found
  5 integrity failure or runtime mismatch
  6 service unreachable, or not authorised (401/403)
Errors are one line on stderr; with --json the error body is also printed on stdout.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import httpx
import pydantic
import typer
from rich.live import Live
from rich.table import Table
from rich.text import Text
from typer.exceptions import TyperException

from neffcache import errors, neff
from neffcache.errors import (
    EXIT_COMPILE_FAILED,
    EXIT_INTEGRITY,
    EXIT_MISS,
    EXIT_SUCCESS,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    ArtifactExists,
    NeffcacheError,
    NotFound,
    Unreachable,
    UsageError,
)
from neffcache.spec import is_digest
from neffcache.client import neuron_cache, output
from neffcache.client.api import NeffcacheClient
from neffcache.client.config import load_settings
from neffcache.client.lockfile import LOCK_FILE_NAME, lock_document, print_lock, read_lock, write_lock
from neffcache.client.pull import (
    LNC_ENV,
    check_lnc,
    check_runtimes,
    download_all,
    plan,
    plan_neuron_cache,
    resolve,
    resolve_locked,
    restore_into_neuron_cache,
)
from neffcache.client.runtime import RuntimeResolver
from neffcache.client.specs import SpecEntry, default_compiler, hash_models, load_spec_files, normalise, parse_input, sha256_file

FINAL_STATES = ("succeeded", "failed", "cancelled")

app = typer.Typer(
    name="neffcache",
    help="Compile farm and artifact cache for AWS Neuron: compile, look up and pull NEFFs; inspect the cache.\n\n"
    "Exit codes: 0 ok, 1 compile failed, 2 bad usage or spec refused, 3 timed out, 4 miss or not found, "
    "5 integrity or runtime mismatch, 6 unreachable or unauthorised.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --- options every command takes ---------------------------------------------------------------
UrlOpt = Annotated[Optional[str], typer.Option("--url", metavar="URL", help="Service URL [env NEFFCACHE_URL].", show_default=False)]
TokenOpt = Annotated[Optional[str], typer.Option("--token", metavar="TOKEN", help="Bearer token [env NEFFCACHE_TOKEN].",
                                                 show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]

# --- spec options shared by compile and lookup -------------------------------------------------
SpecOpt = Annotated[Optional[list[Path]], typer.Option("--spec", metavar="FILE", help="Spec file (YAML or JSON; one spec or a list). "
                                                       "Repeatable.", show_default=False)]
ModelArg = Annotated[Optional[str], typer.Argument(metavar="MODEL", help="Model file (or sha256:<hex> digest), instead of --spec.",
                                                   show_default=False)]
FormatOpt = Annotated[Optional[str], typer.Option("--format", metavar="FORMAT", help="Model format: hlo | torch-export "
                                                  "(default: from the compiler).", show_default=False)]
InputOpt = Annotated[Optional[list[str]], typer.Option("--input", metavar="NAME=SHAPE:DTYPE", help="NAME=DIMxDIM:DTYPE, e.g. x=8x64:float32. "
                                                       "Repeatable, in order.", show_default=False)]
TargetOpt = Annotated[Optional[str], typer.Option("--target", metavar="TARGET", help="trn1 trn1n inf2 trn2 trn3 cpu cuda.",
                                                  show_default=False)]
CompilerOpt = Annotated[Optional[str], typer.Option("--compiler", metavar="NAME", help="neuronx-cc | inductor "
                                                    "(default: from the target).", show_default=False)]
CompilerVersionOpt = Annotated[Optional[str], typer.Option("--compiler-version", metavar="V", show_default=False)]
SpecRuntimeOpt = Annotated[Optional[str], typer.Option("--runtime-version", metavar="V", help="Runtime version the output is "
                                                       "for.", show_default=False)]
FlagOpt = Annotated[Optional[list[str]], typer.Option("--flag", metavar="FLAG", help="Compiler flag, e.g. --flag=-O2. Repeatable.",
                                                      show_default=False)]
NamespaceOpt = Annotated[Optional[str], typer.Option("--namespace", metavar="NS", show_default=False)]


class Ctx:
    url: str | None = None
    token: str | None = None


_root = Ctx()


def _version(value: bool) -> None:
    if value:
        try:
            from importlib.metadata import version

            v = version("neffcache")
        except Exception:  # noqa: BLE001 - running from a checkout
            v = "0.1.0 (not installed)"
        output.line(f"neffcache {v}")
        raise typer.Exit(0)


@app.callback()
def _main_options(
    url: UrlOpt = None,
    token: TokenOpt = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    _root.url = url
    _root.token = token


def _client(url: str | None, token: str | None) -> NeffcacheClient:
    settings = load_settings(url or _root.url, token or _root.token)
    return NeffcacheClient(settings.url, settings.token, timeout_s=settings.http_timeout_s)


def _with_label(entry: SpecEntry, exc: NeffcacheError) -> NeffcacheError:
    exc.detail = f"{entry.label}: {exc.detail}"
    exc.args = (exc.detail,)
    return exc


# --- building specs ----------------------------------------------------------------------------
def _entries(specs: list[Path] | None, model: str | None, fmt: str | None, inputs: list[str] | None,
             target: str | None, compiler: str | None, compiler_version: str | None,
             runtime_version: str | None, flags: list[str] | None, namespace: str | None) -> list[SpecEntry]:
    from_flags = any(v for v in (model, fmt, inputs, target, compiler, compiler_version, runtime_version, flags,
                                 namespace))
    if specs and from_flags:
        raise UsageError("give either --spec FILE or a MODEL with --input/--target/... flags, not both")
    if specs:
        return load_spec_files(specs)
    if not model:
        raise UsageError("nothing to do: give --spec FILE, or a MODEL file with --input and --target")
    if not inputs:
        raise UsageError("--input NAME=DIMxDIM:DTYPE is required with a MODEL (repeat it for several inputs)")
    if not target:
        raise UsageError("--target is required with a MODEL (trn1, trn1n, inf2, trn2, trn3, cpu, cuda)")
    compiler = compiler or default_compiler(target)
    raw: dict[str, Any] = {
        "model": {"format": fmt} if fmt else {},
        "inputs": [parse_input(i) for i in inputs],
        "target": target,
        "compiler": {"name": compiler, "flags": list(flags or [])},
    }
    if compiler_version:
        raw["compiler"]["version"] = compiler_version
    if runtime_version:
        raw["runtime"] = {"name": "torch" if compiler == "inductor" else "neuron-runtime", "version": runtime_version}
    if namespace:
        raw["namespace"] = namespace
    if is_digest(model):
        raw["model"]["digest"] = model
    elif model.startswith("sha256:"):
        raise UsageError(f"MODEL {model!r} is not sha256:<64 lowercase hex>")
    else:
        raw["model"]["path"] = model
    return [normalise(raw, "MODEL" if not raw["model"].get("path") else model, Path.cwd())]


def _upload_missing(client: NeffcacheClient, entries: list[SpecEntry]) -> None:
    """HEAD every model named by path; upload the ones the service lacks, with a progress bar."""
    _upload_files(client, [(e.digest, e.model_path) for e in entries if e.model_path is not None])


def _upload_files(client: NeffcacheClient, files: list[tuple[str, Path]]) -> None:
    """(digest, path) pairs: each digest the service lacks is uploaded once."""
    todo: dict[str, Path] = {}
    for digest, path in files:
        todo.setdefault(digest, path)
    missing = [(digest, path) for digest, path in todo.items() if client.blob_size(digest) is None]
    if not missing:
        return
    with output.transfer_progress() as progress:
        for digest, path in missing:
            size = path.stat().st_size
            task = progress.add_task(f"upload {path.name}", total=size)
            client.upload_blob(digest, path, lambda n, t=task: progress.advance(t, n))
            if progress.disable:  # no bar drawn: say it in one line
                output.say(f"uploaded {path} ({output.human_bytes(size)}) as {digest}")


# --- compile -----------------------------------------------------------------------------------
def _status_text(r: dict[str, Any]) -> str:
    status = r["status"]
    job = r.get("job") or {}
    if status == "hit":
        return "hit"
    if status == "queued":
        return f"queued (joined job {job.get('id')})" if r.get("deduplicated") else f"queued (job {job.get('id')})"
    if status in ("failed", "cancelled"):
        why = job.get("failure_class") or job.get("state")
        lines = (job.get("message") or "").strip().splitlines()
        msg = lines[0][:160] if lines else ""
        if msg.startswith(f"{why}: "):
            msg = msg[len(why) + 2:]
        return f"{status} ({why}{': ' + msg if msg else ''}; job {job.get('id')})"
    if status == "timed_out":
        return f"still {job.get('state')} (job {job.get('id')}) when the wait timed out"
    return status


def _job_row(label: str, job: dict[str, Any]) -> list[Any]:
    return [label, output.short(job.get("key")), job.get("id", "")[:8], job.get("state"),
            f"{job.get('attempts')}/{job.get('max_attempts')}", job.get("worker") or "",
            (job.get("failure_class") or "")]


def _follow(client: NeffcacheClient, results: list[dict[str, Any]], timeout: float | None,
            interval: float) -> None:
    """Poll every queued job until it ends or the deadline passes; show a live table meanwhile."""
    pending = {r["job"]["id"]: r for r in results if r["status"] == "queued"}
    if not pending:
        return
    deadline = time.monotonic() + timeout if timeout else None
    live_mode = output.err.is_terminal
    last_state: dict[str, str] = {}
    unreachable_since: float | None = None

    def render() -> Table:
        t = Table(title="compile jobs", title_justify="left")
        for c in ("spec", "key", "job", "state", "attempt", "worker", "failure"):
            t.add_column(c)
        for r in results:
            if r.get("job"):
                t.add_row(*[Text(str(c)) for c in _job_row(r["label"], r["job"])])
        return t

    live = Live(render(), console=output.err, refresh_per_second=4, transient=True) if live_mode else None
    try:
        if live:
            live.start()
        while pending:
            for job_id in list(pending):
                r = pending[job_id]
                try:
                    job = client.job(job_id)
                    unreachable_since = None
                except Unreachable as exc:
                    unreachable_since = unreachable_since or time.monotonic()
                    if time.monotonic() - unreachable_since > 120:
                        raise
                    if not live:
                        output.say(f"(retrying) {exc.detail}")
                    break
                r["job"] = job
                state = job["state"]
                if not live and last_state.get(job_id) != state:
                    output.say(f"{r['label']}: job {job_id} {state} (attempt {job.get('attempts')}/"
                               f"{job.get('max_attempts')}{', worker ' + job['worker'] if job.get('worker') else ''})")
                last_state[job_id] = state
                if state in FINAL_STATES:
                    r["status"] = state
                    del pending[job_id]
                    if state == "succeeded":
                        try:
                            r["artifact"] = client.artifact(r["key"])
                        except NotFound:
                            pass
            if live:
                live.update(render())
            if not pending:
                break
            if deadline is not None and time.monotonic() >= deadline:
                for r in pending.values():
                    r["status"] = "timed_out"
                break
            time.sleep(interval)
    finally:
        if live:
            live.stop()


@app.command("compile")
def compile_cmd(
    model: ModelArg = None,
    spec: SpecOpt = None,
    fmt: FormatOpt = None,
    inputs: InputOpt = None,
    target: TargetOpt = None,
    compiler: CompilerOpt = None,
    compiler_version: CompilerVersionOpt = None,
    runtime_version: SpecRuntimeOpt = None,
    flags: FlagOpt = None,
    namespace: NamespaceOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Compile again even if the last compile failed.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the jobs until each ends.")] = False,
    timeout: Annotated[Optional[float], typer.Option("--timeout", metavar="S", help="With --wait: give up after S seconds "
                                                     "(exit 3; the jobs go on).", show_default=False)] = None,
    interval: Annotated[float, typer.Option("--poll-interval", metavar="S", help="Seconds between polls.")] = 1.0,
    from_neuron_cache: Annotated[Optional[Path], typer.Option(
        "--from-neuron-cache", metavar="DIR", help="Compile every entry of a libneuronxla cache folder that has no "
        "NEFF yet (neuronxcc-<version>/MODULE_*/), e.g. after a NEURON_EXTRACT_GRAPHS_ONLY=1 run.",
        show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Compile specs (or one model given by flags, or a libneuronxla cache's uncompiled graphs):
    prints each key as hit, queued or failed."""
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout:g}")
    if from_neuron_cache is not None:
        given = [n for n, v in (("MODEL", model), ("--spec", spec), ("--format", fmt), ("--input", inputs),
                                ("--compiler", compiler), ("--compiler-version", compiler_version),
                                ("--flag", flags)) if v]
        if given:
            raise UsageError(f"--from-neuron-cache takes the model, compiler version and flags from the cache "
                             f"folder: drop {', '.join(given)}")
        _compile_from_neuron_cache(from_neuron_cache, target, runtime_version, namespace, force, wait, timeout,
                                   interval, json_out, url, token)
        return
    entries = _entries(spec, model, fmt, inputs, target, compiler, compiler_version, runtime_version, flags,
                       namespace)
    hash_models(entries)
    with _client(url, token) as client:
        _upload_missing(client, entries)
        results = []
        for entry in entries:
            try:
                body = client.compile(entry.spec, force=force)
            except NeffcacheError as exc:
                raise _with_label(entry, exc) from None
            results.append({
                "label": entry.label, "name": entry.name, "key": body["key"], "status": body["status"],
                "deduplicated": body.get("deduplicated"), "job": body.get("job"),
                "artifact": body.get("artifact"), "spec": body.get("spec"),
            })
        if wait or timeout:
            _follow(client, results, timeout, max(interval, 0.05))
    if json_out:
        output.print_json({"results": results})
    else:
        output.table(None, ["spec", "key", "status"],
                     [[r["name"] or r["label"], r["key"], _status_text(r)] for r in results])
    statuses = {r["status"] for r in results}
    if statuses & {"failed", "cancelled"}:
        if not json_out:
            bad = [r for r in results if r["status"] in ("failed", "cancelled")]
            output.say(f"{len(bad)} of {len(results)} compile(s) failed; see `neffcache logs JOB`")
        raise typer.Exit(EXIT_COMPILE_FAILED)
    if "timed_out" in statuses:
        # The results are already out (on stdout with --json): the reason is one line on stderr.
        waiting = [r["job"]["id"] for r in results if r["status"] == "timed_out"]
        output.say(f"neffcache: timed out after {timeout:g} s waiting for {len(waiting)} job(s): "
                   f"{', '.join(waiting)} (they go on running)")
        raise typer.Exit(EXIT_TIMEOUT)


# --- the libneuronxla cache: compile and push its entries --------------------------------------
def _cache_entries(root: Path) -> list[neuron_cache.CacheEntry]:
    entries = neuron_cache.list_entries(root)
    if not entries:
        raise UsageError(f"{root} holds no libneuronxla cache entries (neuronxcc-<version>/MODULE_*/ folders)")
    return entries


def _cache_spec(entry: neuron_cache.CacheEntry, target: str | None, runtime_version: str | None,
                namespace: str | None) -> SpecEntry:
    """The entry's spec, checked locally (a bad one is a usage error naming the entry)."""
    return normalise(neuron_cache.entry_spec(entry, target, runtime_version, namespace), entry.label, None)


def _entry_row(entry: neuron_cache.CacheEntry) -> dict[str, Any]:
    return {"label": entry.label, "name": entry.module, "entry": entry.label, "compiler_dir": entry.compiler_dir,
            "module": entry.module}


def _refusal(exc: NeffcacheError) -> bool:
    """True when the service refused this one entry (the others may still go); False when the
    service cannot be used at all (unreachable, unauthorised, failing)."""
    return exc.exit_code != EXIT_UNAVAILABLE


def _skipped(entries: list[neuron_cache.CacheEntry], wanted: list[neuron_cache.CacheEntry],
             why: Any) -> list[dict[str, str]]:
    chosen = {id(e) for e in wanted}
    return [{"entry": e.label, "reason": why(e)} for e in entries if id(e) not in chosen]


def _say_skipped(skipped: list[dict[str, str]]) -> None:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    for reason, n in counts.items():
        output.say(f"skipped {n} entr{'y' if n == 1 else 'ies'}: {reason}")


def _compile_from_neuron_cache(root: Path, target: str | None, runtime_version: str | None, namespace: str | None,
                               force: bool, wait: bool, timeout: float | None, interval: float, json_out: bool,
                               url: str | None, token: str | None) -> None:
    entries = _cache_entries(root)
    todo = [e for e in entries if not e.has_neff]
    skipped = _skipped(entries, todo, lambda e: "already compiled (model.neff and model.done)" if e.has_done
                       else "model.neff without model.done (a compile in progress, or interrupted)")
    specs = [(e, _cache_spec(e, target, runtime_version, namespace)) for e in todo]  # all checked before any call
    hash_models([s for _, s in specs])
    results: list[dict[str, Any]] = []
    with _client(url, token) as client:
        _upload_missing(client, [s for _, s in specs])
        for entry, spec_entry in specs:
            row = _entry_row(entry)
            try:
                body = client.compile(spec_entry.spec, force=force, annotations=entry.annotations())
            except NeffcacheError as exc:
                if not _refusal(exc):
                    raise _with_label(spec_entry, exc) from None
                results.append({**row, "key": exc.extra.get("key"), "status": "refused", "error": exc.code,
                                "detail": exc.detail, "job": None, "artifact": None, "spec": None})
                continue
            results.append({**row, "key": body["key"], "status": body["status"],
                            "deduplicated": body.get("deduplicated"), "job": body.get("job"),
                            "artifact": body.get("artifact"), "spec": body.get("spec")})
            placed = ((body.get("artifact") or {}).get("annotations") or {}).get(neuron_cache.ANNOTATION_MODULE)
            if body["status"] == "hit" and placed != entry.module:
                output.say(f"{entry.label}: already published " + (f"from {placed}" if placed else
                           "without neuron_cache annotations") + "; pull --into-neuron-cache restores it "
                           + (f"as {placed}" if placed else "only with --dest"))
        if wait or timeout:
            _follow(client, results, timeout, max(interval, 0.05))
    if json_out:
        output.print_json({"neuron_cache": str(root), "results": results, "skipped": skipped})
    else:
        if results:
            output.table(None, ["entry", "key", "status"],
                         [[r["entry"], r["key"] or "", _status_text(r) if r["status"] != "refused"
                           else f"refused ({r['error']}: {r['detail']})"] for r in results])
        else:
            output.say(f"nothing to compile in {root}")
        _say_skipped(skipped)
    statuses = {r["status"] for r in results}
    refused = [r for r in results if r["status"] == "refused"]
    if statuses & {"failed", "cancelled"}:
        if not json_out:
            bad = [r for r in results if r["status"] in ("failed", "cancelled")]
            output.say(f"{len(bad)} of {len(results)} compile(s) failed; see `neffcache logs JOB`")
        raise typer.Exit(EXIT_COMPILE_FAILED)
    if refused:
        output.say(f"neffcache: the service refused {len(refused)} of {len(results)} entr"
                   f"{'y' if len(results) == 1 else 'ies'}: " + "; ".join(f"{r['entry']}: {r['detail']}" for r in refused))
        raise typer.Exit(errors.exit_code(refused[0]["error"]))
    if "timed_out" in statuses:
        waiting = [r["job"]["id"] for r in results if r["status"] == "timed_out"]
        output.say(f"neffcache: timed out after {timeout:g} s waiting for {len(waiting)} job(s): "
                   f"{', '.join(waiting)} (they go on running)")
        raise typer.Exit(EXIT_TIMEOUT)


@app.command("push")
def push_cmd(
    from_neuron_cache: Annotated[Path, typer.Option(
        "--from-neuron-cache", metavar="DIR", help="A libneuronxla cache folder: every entry holding model.neff and "
        "model.done is validated and published.", show_default=False)],
    target: Annotated[Optional[str], typer.Option("--target", metavar="TARGET", help="trn1 trn1n inf2 trn2 trn3 "
                                                  "(default: the --target in each entry's compile_flags.json).",
                                                  show_default=False)] = None,
    runtime_version: Annotated[Optional[str], typer.Option(
        "--runtime-version", metavar="V", help="Runtime the NEFFs are for (default: the runtime of the compiler's "
        "SDK release).", show_default=False)] = None,
    namespace: NamespaceOpt = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Publish the NEFFs a host already compiled into its libneuronxla cache.

    Each entry becomes the artifact of the spec `compile --from-neuron-cache` would send (same key,
    same annotations). An invalid NEFF is reported and not sent; the valid ones are still published,
    and the command then exits 5. A key already published (by the farm or another host) is left as it is.
    """
    root = from_neuron_cache
    entries = _cache_entries(root)
    ready = [e for e in entries if e.has_neff_and_done]
    skipped = _skipped(entries, ready, lambda e: "model.neff without model.done (a compile in progress, or "
                       "interrupted)" if e.has_neff else "no model.neff (compile it: neffcache compile "
                       "--from-neuron-cache)")
    specs = [(e, _cache_spec(e, target, runtime_version, namespace)) for e in ready]  # all checked before any call
    results: list[dict[str, Any]] = []
    valid: list[tuple[neuron_cache.CacheEntry, SpecEntry, str]] = []
    for entry, spec_entry in specs:
        row = _entry_row(entry)
        try:
            with open(entry.neff_path, "rb") as f:
                header = neff.validate(f, entry.neff_path.stat().st_size)
        except errors.InvalidNeff as exc:
            results.append({**row, "key": None, "status": "invalid", "error": "invalid_neff",
                            "detail": f"{neuron_cache.NEFF_FILE} is not a valid NEFF: {exc}"})
            continue
        except OSError as exc:
            raise UsageError(f"{entry.label}: cannot read {neuron_cache.NEFF_FILE} ({exc.strerror or exc})") from None
        row.update(status="pending", neff=header.summary())
        results.append(row)
        valid.append((entry, spec_entry, sha256_file(entry.neff_path)))
    hash_models([s for _, s, _ in valid])
    with _client(url, token) as client:
        _upload_files(client, [(s.digest, s.model_path) for _, s, _ in valid if s.model_path is not None]
                      + [(d, e.neff_path) for e, _, d in valid])
        rows = {r["entry"]: r for r in results}
        for entry, spec_entry, neff_digest in valid:
            row = rows[entry.label]
            try:
                body = client.publish(spec_entry.spec, [{"name": neuron_cache.NEFF_FILE, "digest": neff_digest}],
                                      annotations=entry.annotations())
            except ArtifactExists as exc:
                row.update(key=exc.extra.get("key"), status="exists", same_files=False,
                           detail="published already with another NEFF (kept)")
                continue
            except NeffcacheError as exc:
                if not _refusal(exc):
                    raise _with_label(spec_entry, exc) from None
                row.update(key=exc.extra.get("key"), status="invalid" if exc.code == "invalid_neff" else "refused",
                           error=exc.code, detail=exc.detail)
                continue
            row.update(key=body["key"], status=body["status"], spec=body.get("spec"))
            if body["status"] == "exists":
                row["same_files"] = True
    if json_out:
        output.print_json({"neuron_cache": str(root), "results": results, "skipped": skipped})
    else:
        words = {"published": "published", "exists": "already published", "invalid": "invalid NEFF, not published",
                 "refused": "refused"}
        if results:
            output.table(None, ["entry", "key", "result"],
                         [[r["entry"], r.get("key") or "", words.get(r["status"], r["status"])
                           + (f" ({r['detail']})" if r.get("detail") else "")] for r in results])
        else:
            output.say(f"nothing to push in {root}")
        _say_skipped(skipped)
        counts = {k: sum(1 for r in results if r["status"] == k) for k in words}
        if results:
            output.say(f"{counts['published']} published, {counts['exists']} already published, "
                       f"{counts['invalid']} invalid, {counts['refused']} refused")
    invalid = [r for r in results if r["status"] == "invalid"]
    refused = [r for r in results if r["status"] == "refused"]
    if invalid:
        output.say("neffcache: " + "; ".join(f"{r['entry']}: {r['detail']}" for r in invalid))
        raise typer.Exit(EXIT_INTEGRITY)
    if refused:
        output.say("neffcache: " + "; ".join(f"{r['entry']}: {r['detail']}" for r in refused))
        raise typer.Exit(errors.exit_code(refused[0]["error"]))


# --- lookup ------------------------------------------------------------------------------------
@app.command("lookup")
def lookup_cmd(
    model: ModelArg = None,
    spec: SpecOpt = None,
    fmt: FormatOpt = None,
    inputs: InputOpt = None,
    target: TargetOpt = None,
    compiler: CompilerOpt = None,
    compiler_version: CompilerVersionOpt = None,
    runtime_version: SpecRuntimeOpt = None,
    flags: FlagOpt = None,
    namespace: NamespaceOpt = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Hit or miss per spec; a miss shows the nearest published manifests and the fields that differ."""
    entries = _entries(spec, model, fmt, inputs, target, compiler, compiler_version, runtime_version, flags,
                       namespace)
    hash_models(entries)
    results = []
    with _client(url, token) as client:
        for entry in entries:
            try:
                body = client.lookup(entry.spec)
                results.append({"label": entry.label, "name": entry.name, "status": "hit", "key": body["key"],
                                "artifact": body["artifact"], "spec": body.get("spec")})
            except NotFound as exc:
                if "key" not in exc.extra:
                    raise _with_label(entry, exc) from None
                results.append({"label": entry.label, "name": entry.name, "status": "miss", "key": exc.extra["key"],
                                "detail": exc.detail, "nearest": exc.extra.get("nearest") or []})
            except NeffcacheError as exc:
                raise _with_label(entry, exc) from None
    misses = [r for r in results if r["status"] == "miss"]
    if json_out:
        output.print_json({"results": results})
    else:
        rows = []
        for r in results:
            if r["status"] == "hit":
                a = r["artifact"]
                detail = (f"{len(a['files'])} file(s), {output.human_bytes(sum(f['size'] for f in a['files']))}, "
                          f"compiled in {output.human_seconds(a.get('compile_seconds'))}, {a.get('hits', 0)} hit(s)")
            else:
                detail = r["detail"]
            rows.append([r["name"] or r["label"], r["key"], r["status"], detail])
        output.table(None, ["spec", "key", "result", "detail"], rows)
        for r in misses:
            if not r["nearest"]:
                continue
            nrows = []
            for n in r["nearest"]:
                differs = n.get("differs") or []
                for i, d in enumerate(differs):
                    nrows.append([n["key"] if i == 0 else "", d.get("field"), _show(d.get("wanted")),
                                  _show(d.get("found"))])
                if not differs:
                    nrows.append([n["key"], "(identical manifest)", "", ""])
            output.table(f"nearest published for {r['label']}", ["key", "field", "wanted", "found"], nrows)
    if misses:
        raise typer.Exit(EXIT_MISS)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


# --- pull --------------------------------------------------------------------------------------
@app.command("pull")
def pull_cmd(
    keys: Annotated[Optional[list[str]], typer.Argument(metavar="KEY", help="Artifact keys.", show_default=False)] = None,
    dest: Annotated[Optional[Path], typer.Option("--dest", metavar="DIR", help="Folder to pull into: DIR/<key>/<file>, "
                                                 f"and DIR/{LOCK_FILE_NAME} recording what was pulled.",
                                                 show_default=False)] = None,
    into_neuron_cache: Annotated[Optional[Path], typer.Option(
        "--into-neuron-cache", metavar="DIR", help="Restore each artifact as a libneuronxla cache entry instead: "
        "DIR/neuronxcc-<version>/MODULE_*/ with model.neff, compile_flags.json, the HLO, and model.done last.",
        show_default=False)] = None,
    spec: SpecOpt = None,
    lock: Annotated[Optional[Path], typer.Option("--lock", metavar="FILE", help="Pull exactly what this lock file "
                                                 "(neffcache lock) names: no key is computed, every digest must match.",
                                                 show_default=False)] = None,
    runtime_version: Annotated[Optional[list[str]], typer.Option(
        "--runtime-version", metavar="V", help="Local runtime version (V, or NAME=V for one runtime) "
        "[env NEFFCACHE_RUNTIME_VERSION; else detected].", show_default=False)] = None,
    parallel: Annotated[int, typer.Option("--parallel", metavar="N", help="Files downloaded at once.", min=1, max=64)] = 4,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Pull artifacts, fail closed: resolve everything first; any miss writes nothing (exit 4).

    Refused before anything is written (exit 5): an artifact built for another runtime, and with
    NEURON_LOGICAL_NC_CONFIG set, a NEFF built for another number of logical NeuronCores.
    """
    if dest is None and into_neuron_cache is None:
        raise UsageError("--dest DIR (or --into-neuron-cache DIR) is required")
    if dest is not None and into_neuron_cache is not None:
        raise UsageError("give --dest DIR or --into-neuron-cache DIR, not both")
    if lock is not None and (keys or spec):
        raise UsageError("--lock FILE pulls exactly what the lock names: give it without KEYs or --spec")
    if not keys and not spec and lock is None:
        raise UsageError("nothing to pull: give artifact KEYs, --spec FILE or --lock FILE")
    for key in keys or []:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise UsageError(f"{key!r} is not an artifact key (64 lowercase hex characters)")
    folder = dest if dest is not None else into_neuron_cache
    assert folder is not None
    option = "--dest" if dest is not None else "--into-neuron-cache"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{option} {folder} exists and is not a folder")
    locked = read_lock(lock) if lock is not None else None
    entries = load_spec_files(spec) if spec else []
    hash_models(entries)  # hashed only: a lookup does not need the model uploaded
    settings = load_settings(url or _root.url, token or _root.token)
    resolver = RuntimeResolver(runtime_version or [], settings.runtime_version)
    lock_path = dest / LOCK_FILE_NAME if dest is not None else None
    with NeffcacheClient(settings.url, settings.token, timeout_s=settings.http_timeout_s,
                         max_connections=max(parallel * 2, 8)) as client:
        if locked is not None:
            wanted = resolve_locked(client, locked, f"lock file {lock}")
        else:
            wanted = resolve(client, list(dict.fromkeys(keys or [])), entries)
        check_runtimes(wanted, resolver)
        check_lnc(wanted, os.environ.get(LNC_ENV))
        if into_neuron_cache is not None:
            restores = plan_neuron_cache(client, wanted, into_neuron_cache)
            total = sum(r.neff.size + r.hlo.size for r in restores)
            with output.transfer_progress() as progress:
                task = progress.add_task(f"restore {len(restores)} entr{'y' if len(restores) == 1 else 'ies'}",
                                         total=total)
                restore_into_neuron_cache(client, restores, parallel, lambda n: progress.advance(task, n))
        else:
            assert dest is not None and lock_path is not None
            files = plan(wanted, dest)
            total = sum(f.size for f in files)
            with output.transfer_progress() as progress:
                task = progress.add_task(f"pull {len(files)} file(s)", total=total)
                download_all(client, files, parallel, lambda n: progress.advance(task, n))
            write_lock(lock_path, lock_document(settings.url, wanted))
    if into_neuron_cache is not None:
        _report_neuron_cache_pull(into_neuron_cache, restores, lock, json_out)
        return
    if json_out:
        output.print_json({
            "dest": str(dest),
            "lock": str(lock_path),
            "from_lock": str(lock) if lock is not None else None,
            "artifacts": [
                {"key": w.key, "names": w.names, "requested_as": w.requested_as,
                 "runtime": w.artifact["manifest"]["runtime"],
                 "files": [{"name": f.name, "path": str(f.path), "sha256": f.sha256, "size": f.size,
                            "status": f.status} for f in files if f.key == w.key]}
                for w in wanted
            ],
        })
    else:
        output.table(None, ["key", "file", "size", "result"],
                     [[f.key, f.name, output.human_bytes(f.size), "already present" if f.status == "present"
                       else "downloaded, sha256 verified"] for f in files])
        fetched = sum(1 for f in files if f.status == "downloaded")
        output.say(f"pulled {len(wanted)} artifact(s) into {dest}: {fetched} file(s) downloaded, "
                   f"{len(files) - fetched} already present; recorded in {lock_path}")


def _report_neuron_cache_pull(root: Path, restores: list[Any], lock: Path | None, json_out: bool) -> None:
    if json_out:
        output.print_json({
            "neuron_cache": str(root),
            "from_lock": str(lock) if lock is not None else None,
            "artifacts": [
                {"key": r.item.key, "names": r.item.names, "requested_as": r.item.requested_as,
                 "runtime": r.item.artifact["manifest"]["runtime"], "entry": r.place.label, "path": str(r.folder),
                 "status": r.status,
                 "files": [{"name": f.name, "path": str(f.path), "sha256": f.sha256, "size": f.size,
                            "status": f.status} for f in (r.neff, r.hlo)]}
                for r in restores
            ],
        })
        return
    output.table(None, ["entry", "key", "result"],
                 [[r.place.label, r.item.key, "already present" if r.status == "present"
                   else "restored, sha256 verified"] for r in restores])
    restored = sum(1 for r in restores if r.status == "restored")
    output.say(f"restored {restored} entr{'y' if restored == 1 else 'ies'} into {root}, "
               f"{len(restores) - restored} already present")


# --- lock --------------------------------------------------------------------------------------
@app.command("lock")
def lock_cmd(
    keys: Annotated[Optional[list[str]], typer.Argument(metavar="KEY", help="Artifact keys (besides --spec).",
                                                        show_default=False)] = None,
    spec: SpecOpt = None,
    output_file: Annotated[Optional[Path], typer.Option("--output", "-o", metavar="FILE", help="Write the lock here "
                                                        "(default: stdout).", show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write a deployment lock file: each spec's key and its files' names, digests and sizes.

    `neffcache pull --lock FILE --dest DIR` then pulls exactly those, without asking the service to
    compute any key. Any spec not published: exit 4, nothing written.
    """
    if not keys and not spec:
        raise UsageError("nothing to lock: give --spec FILE (or artifact KEYs)")
    for key in keys or []:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise UsageError(f"{key!r} is not an artifact key (64 lowercase hex characters)")
    if output_file is not None and output_file.exists() and output_file.is_dir():
        raise UsageError(f"--output {output_file} is a folder")
    entries = load_spec_files(spec) if spec else []
    hash_models(entries)
    settings = load_settings(url or _root.url, token or _root.token)
    with _client(url, token) as client:
        wanted = resolve(client, list(dict.fromkeys(keys or [])), entries, "nothing was written")
    doc = lock_document(settings.url, wanted)
    if output_file is None:
        print_lock(doc)
        return
    write_lock(output_file, doc)
    if json_out:
        print_lock(doc)
    n_files = sum(len(a["files"]) for a in doc["artifacts"])
    output.say(f"locked {len(wanted)} artifact(s), {n_files} file(s), in {output_file}")


# --- inspection --------------------------------------------------------------------------------
@app.command("ls")
def ls_cmd(
    model: Annotated[Optional[str], typer.Option("--model", metavar="DIGEST|FILE", help="Model digest, or a model file to hash.",
                                                 show_default=False)] = None,
    target: Annotated[Optional[str], typer.Option("--target", metavar="TARGET", show_default=False)] = None,
    compiler: Annotated[Optional[str], typer.Option("--compiler", metavar="C", help="Name, version, or name==version.",
                                                    show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, max=500)] = 50,
    cursor: Annotated[Optional[str], typer.Option("--cursor", metavar="CURSOR", help="Continue a listing.", show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List published artifacts, newest first."""
    if model and not is_digest(model):
        path = Path(model)
        if not path.is_file():
            raise UsageError(f"--model {model!r} is neither a sha256:<hex> digest nor a file")
        model = sha256_file(path)
    with _client(url, token) as client:
        body = client.artifacts(model=model, target=target, compiler=compiler, limit=limit, cursor=cursor)
    if json_out:
        output.print_json(body)
        return
    rows = []
    for a in body["artifacts"]:
        m = a["manifest"]
        rows.append([a["key"], output.short(m["model"]["digest"]), m["target"],
                     f"{m['compiler']['name']} {m['compiler']['version']}", m["runtime"]["version"],
                     output.human_bytes(sum(f["size"] for f in a["files"])),
                     output.when(a.get("created_at"), ago=False)])
    if not rows:
        output.say("no artifacts match")
        return
    output.table(None, ["key", "model", "target", "compiler", "runtime", "size", "published"], rows)
    if body.get("next_cursor"):
        output.say(f"more: neffcache ls --cursor {body['next_cursor']}")


@app.command("show")
def show_cmd(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Artifact key.", show_default=False)],
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """One artifact: its manifest, files and hits."""
    with _client(url, token) as client:
        a = client.artifact(key)
    if json_out:
        output.print_json(a)
        return
    m = a["manifest"]
    rows = [
        ["key", a["key"]],
        ["model", f"{m['model']['format']} {m['model']['digest']}"],
        ["inputs", ", ".join(f"{i['name']}={'x'.join(map(str, i['shape']))}:{i['dtype']}" for i in m["inputs"])],
        ["target", m["target"] + (f" ({m['isa']})" if m.get("isa") else "")],
        ["compiler", f"{m['compiler']['name']}=={m['compiler']['version']} {' '.join(m['compiler']['flags'])}".strip()],
        ["runtime", f"{m['runtime']['name']}=={m['runtime']['version']}"],
        ["namespace", m.get("namespace")],
        ["compiled in", output.human_seconds(a.get("compile_seconds"))],
        ["published", output.when(a.get("created_at"))],
        ["job", a.get("job_id") or ""],
        ["hits", a.get("hits", "")],
    ]
    if m.get("allow_toolchain_mismatch"):
        rows.append(["toolchain", "mismatch allowed (compiler and runtime of different SDK releases)"])
    output.table(None, ["field", "value"], rows)
    output.table("files", ["name", "size", "sha256"],
                 [[f["name"], output.human_bytes(f["size"]), f["sha256"]] for f in a["files"]])
    headers = [f for f in a["files"] if f.get("neff")]
    if headers:
        output.table("NEFF headers", ["file", "neff_version", "neff_build_version", "lnc_size", "feature_bits",
                                      "num_tpb", "name"],
                     [[f["name"], h.get("neff_version"), h.get("neff_build_version"), h.get("lnc_size"),
                       _bits(h.get("feature_bits")), h.get("num_tpb"), h.get("name")]
                      for f in headers for h in [f["neff"]]])
    annotations = a.get("annotations") or {}
    if annotations:
        output.table("annotations", ["name", "value"], [[k, v] for k, v in sorted(annotations.items())])


def _bits(value: Any) -> str:
    return f"{value} (0x{value:x})" if isinstance(value, int) else ("" if value is None else str(value))


@app.command("stats")
def stats_cmd(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Hit rate and compile time saved, in total and by target and compiler."""
    with _client(url, token) as client:
        s = client.stats()
    if json_out:
        output.print_json(s)
        return

    def row(name: str, v: dict[str, Any]) -> list[Any]:
        rate = v.get("hit_rate")
        return [name, v.get("lookups"), v.get("hits"), v.get("misses"),
                "" if rate is None else f"{rate * 100:.1f}%", output.human_seconds(v.get("compile_seconds_saved"))]

    rows = [row("all", s)]
    rows += [row(f"target {t}", v) for t, v in sorted(s.get("by_target", {}).items())]
    rows += [row(c, v) for c, v in sorted(s.get("by_compiler", {}).items())]
    output.table(None, ["", "lookups", "hits", "misses", "hit rate", "compile time saved"], rows)
    output.line(f"downloads {s.get('downloads', 0)}, compiles succeeded {s.get('compiles_succeeded', 0)}, "
                f"failed {s.get('compiles_failed', 0)}")


@app.command("hits")
def hits_cmd(
    key: Annotated[Optional[str], typer.Argument(metavar="KEY", help="Only this artifact.", show_default=False)] = None,
    caller: Annotated[Optional[str], typer.Option("--caller", metavar="NAME", help="Only this token's hits.",
                                                  show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, max=500)] = 50,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Which token hit which artifact, and when (newest first)."""
    with _client(url, token) as client:
        body = client.hits(key, limit, caller)
    if json_out:
        output.print_json(body)
        return
    rows = [[h.get("at") and output.when(h["at"]), h.get("caller") or "(anonymous)", h.get("kind"), h.get("outcome"),
             h.get("key")] for h in body.get("hits", [])]
    if not rows:
        output.say("no hits recorded" + (f" for {key}" if key else ""))
        return
    output.table(None, ["when", "caller", "kind", "outcome", "key"], rows)


@app.command("jobs")
def jobs_cmd(
    state: Annotated[Optional[str], typer.Option("--state", metavar="STATE", help="queued running succeeded failed cancelled.",
                                                 show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, max=500)] = 50,
    cursor: Annotated[Optional[str], typer.Option("--cursor", metavar="CURSOR", show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Compile jobs, newest first."""
    if state and state not in ("queued", "running", "succeeded", "failed", "cancelled"):
        raise UsageError(f"--state {state!r}: use queued, running, succeeded, failed or cancelled")
    with _client(url, token) as client:
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


@app.command("logs")
def logs_cmd(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id.", show_default=False)],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Poll until the job ends; exit 1 if it failed.")]
    = False,
    interval: Annotated[float, typer.Option("--poll-interval", metavar="S")] = 1.0,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """The compiler log of a job's last attempt."""
    with _client(url, token) as client:
        if not follow:
            text = client.job_log(job_id)
            if json_out:
                output.print_json({"job": job_id, "log": text})
            else:
                sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
            return
        printed = ""
        last_state, attempt, offset = None, None, 0
        while True:
            job = client.job(job_id)
            if job["state"] != last_state:
                output.say(f"job {job_id}: {job['state']} (attempt {job.get('attempts')}/{job.get('max_attempts')})")
                last_state = job["state"]
            if attempt is not None and job.get("attempts") != attempt and job["state"] == "running":
                offset = 0  # a new attempt writes a new log
                if not json_out:
                    sys.stdout.write(f"\n--- attempt {job.get('attempts')} ---\n")
            attempt = job.get("attempts")
            try:
                chunk = client.job_log_from(job_id, offset)
            except NotFound:  # no log yet
                chunk = None
            if chunk is not None:
                text = (f"[... {chunk.skipped} bytes not kept while running ...]\n" if chunk.skipped else "") + chunk.text
                if text and not json_out:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                printed += text
                offset = chunk.end
            if job["state"] in FINAL_STATES and (chunk is None or chunk.complete):
                break
            time.sleep(max(interval, 0.05))
        if json_out:
            output.print_json({"job": job_id, "state": job["state"], "failure_class": job.get("failure_class"),
                               "log": printed})
        elif printed and not printed.endswith("\n"):
            sys.stdout.write("\n")
        if not printed and not json_out:
            output.say(f"job {job_id} ended {job['state']} without a log" +
                       (f": {job['message']}" if job.get("message") else ""))
        if job["state"] != "succeeded":
            raise typer.Exit(EXIT_COMPILE_FAILED)


@app.command("cancel")
def cancel_cmd(
    job_id: Annotated[str, typer.Argument(metavar="JOB", help="Job id.", show_default=False)],
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Cancel a queued job, or ask the worker running it to stop."""
    with _client(url, token) as client:
        job, at_once = client.cancel_job(job_id)
    if json_out:
        output.print_json(job)
        return
    output.line(f"job {job_id} cancelled" if at_once else f"job {job_id} is running: its worker was asked to stop it")


@app.command("workers")
def workers_cmd(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Registered compile workers, their toolchains and whether they are alive."""
    with _client(url, token) as client:
        body = client.workers()
    if json_out:
        output.print_json(body)
        return
    rows = []
    for w in body["workers"]:
        tc = w.get("toolchain") or {}
        rows.append([w["id"], w.get("host"), w.get("state"),
                     f"{tc.get('compiler_name')}=={tc.get('compiler_version')}",
                     f"{tc.get('runtime_name')}=={tc.get('runtime_version')}",
                     " ".join(tc.get("targets", [])), w.get("current_job") or "",
                     output.when(w.get("last_heartbeat"))])
    if not rows:
        output.say("no workers registered")
        return
    output.table(None, ["worker", "host", "state", "compiler", "runtime", "targets", "job", "heartbeat"], rows)


@app.command("toolchains")
def toolchains_cmd(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Neuron SDK releases (which neuronx-cc and runtime ship together, which have live workers),
    and the toolchains live workers offer."""
    with _client(url, token) as client:
        body = client.toolchains()
    if json_out:
        output.print_json(body)
        return
    releases = body.get("releases", [])
    output.table("SDK releases", ["sdk", "neuronx-cc", "runtime", "live workers"],
                 [[r.get("sdk"), ", ".join(r.get("neuronx_cc", [])), ", ".join(r.get("runtime", [])),
                   r.get("live_workers") or ""] for r in releases])
    live = body.get("live", [])
    if not live:
        output.say("no live workers")
        return
    output.table("live toolchains", ["compiler", "runtime", "workers", "SDK releases"],
                 [[t.get("compiler"), t.get("runtime"), t.get("workers"), ", ".join(t.get("sdk_releases") or [])]
                  for t in live])


# --- the entry point ---------------------------------------------------------------------------
def _fail(exc: NeffcacheError, json_mode: bool) -> int:
    detail = " ".join((exc.detail or exc.code).split())
    if json_mode:
        output.print_json(exc.to_body())
    output.err.print(Text(f"neffcache: {detail}"), soft_wrap=True)
    return exc.exit_code


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in args
    try:
        code = app(args=args, prog_name="neffcache", standalone_mode=False)
        code = code if isinstance(code, int) else EXIT_SUCCESS
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        output.say("neffcache: aborted")
        code = 130
    except TyperException as exc:  # typer's usage errors: bad option, missing argument, bad value
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `neffcache`: the help, as help
            sys.stderr.write(exc.format_message() + "\n")
            sys.exit(EXIT_USAGE)
        hint = ""
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            hint = f" (see {ctx.command_path} --help)"
        output.err.print(Text(f"neffcache: {' '.join(exc.format_message().split())}{hint}"), soft_wrap=True)
        code = EXIT_USAGE
    except NeffcacheError as exc:
        code = _fail(exc, json_mode)
    except httpx.HTTPError as exc:  # anything the client class did not translate
        code = _fail(Unreachable(f"HTTP error: {exc}"), json_mode)
    except pydantic.ValidationError as exc:  # a bad NEFFCACHE_* client setting
        problems = "; ".join(f"NEFFCACHE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        code = _fail(UsageError(f"bad setting: {problems}"), json_mode)
    except KeyboardInterrupt:
        output.say("neffcache: interrupted")
        code = 130
    except BrokenPipeError:
        code = EXIT_SUCCESS
    except Exception as exc:  # noqa: BLE001 - a bug: still one line unless asked for the traceback
        if os.environ.get("NEFFCACHE_DEBUG"):
            raise
        code = _fail(NeffcacheError(f"unexpected error: {type(exc).__name__}: {exc} "
                                    "(set NEFFCACHE_DEBUG=1 for the traceback)"), json_mode)
    sys.exit(code)


if __name__ == "__main__":
    main()
