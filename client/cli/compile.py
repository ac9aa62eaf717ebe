"""`compile` and `lookup`: send specs (from spec files, or one model given by flags)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from neffcache.client import output
from neffcache.client.cli import push, session
from neffcache.client.cli.exits import conclude
from neffcache.client.cli.options import (
    JsonOpt,
    SpecArgs,
    TokenOpt,
    UrlOpt,
    spec_options,
)
from neffcache.client.cli.progress import follow, status_text, upload_missing
from neffcache.errors import NeffcacheError, NotFound, UsageError


@spec_options
def compile_cmd(
    spec_args: SpecArgs,
    force: Annotated[bool, typer.Option("--force", help="Compile again even if the last compile failed.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the jobs until each ends.")] = False,
    timeout: Annotated[float | None, typer.Option("--timeout", metavar="S", help="With --wait: give up after S seconds "
                                                     "(exit 3; the jobs go on).", show_default=False)] = None,
    interval: Annotated[float, typer.Option("--poll-interval", metavar="S", help="Seconds between polls.")] = 1.0,
    from_neuron_cache: Annotated[Path | None, typer.Option(
        "--from-neuron-cache", metavar="DIR", help="Compile every entry of a libneuronxla cache folder that has no "
        "NEFF yet (neuronxcc-<version>/MODULE_*/), e.g. after a NEURON_EXTRACT_GRAPHS_ONLY=1 run.",
        show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Compile specs (or one model given by flags, or a libneuronxla cache's uncompiled graphs):
    prints each key as hit, queued or failed."""
    a = spec_args
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout:g}")
    if from_neuron_cache is not None:
        given = [n for n, v in (("MODEL", a.model), ("--spec", a.spec), ("--format", a.fmt), ("--input", a.inputs),
                                ("--compiler", a.compiler), ("--compiler-version", a.compiler_version),
                                ("--flag", a.flags)) if v]
        if given:
            raise UsageError(f"--from-neuron-cache takes the model, compiler version and flags from the cache "
                             f"folder: drop {', '.join(given)}")
        push.compile_from_neuron_cache(from_neuron_cache, a.target, a.runtime_version, a.namespace, force, wait,
                                       timeout, interval, json_out, url, token)
        return
    from neffcache.client.specs import hash_models  # imported when needed: see the package docstring

    entries = a.entries()
    hash_models(entries)
    with session.open_client(url, token) as client:
        upload_missing(client, entries)
        results = []
        for entry in entries:
            try:
                body = client.compile(entry.spec, force=force)
            except NeffcacheError as exc:
                raise session.with_label(entry, exc) from None
            results.append({
                "label": entry.label, "name": entry.name, "key": body["key"], "status": body["status"],
                "deduplicated": body.get("deduplicated"), "job": body.get("job"),
                "artifact": body.get("artifact"), "spec": body.get("spec"),
            })
        if wait or timeout:
            follow(client, results, timeout, max(interval, 0.05))
    if json_out:
        output.print_json({"results": results})
    else:
        output.table(None, ["spec", "key", "status"],
                     [[r["name"] or r["label"], r["key"], status_text(r)] for r in results])
    conclude(results, timeout=timeout)


@spec_options
def lookup_cmd(
    spec_args: SpecArgs,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Hit or miss per spec; a miss shows the nearest published manifests and the fields that differ."""
    from neffcache.client.specs import hash_models  # imported when needed: see the package docstring

    entries = spec_args.entries()
    hash_models(entries)
    results = []
    with session.open_client(url, token) as client:
        for entry in entries:
            try:
                body = client.lookup(entry.spec)
                results.append({"label": entry.label, "name": entry.name, "status": "hit", "key": body["key"],
                                "artifact": body["artifact"], "spec": body.get("spec")})
            except NotFound as exc:
                if "key" not in exc.extra:
                    raise session.with_label(entry, exc) from None
                results.append({"label": entry.label, "name": entry.name, "status": "miss", "key": exc.extra["key"],
                                "detail": exc.detail, "nearest": exc.extra.get("nearest") or []})
            except NeffcacheError as exc:
                raise session.with_label(entry, exc) from None
    if json_out:
        output.print_json({"results": results})
    else:
        _print_lookups(results)
    conclude(results)


def usage_counts(a: dict[str, Any]) -> tuple[Any, Any]:
    """An artifact's (lookup hits, downloads): `lookup_hits` from a service that names the two
    counts apart, else its `hits`; None where the service does not say."""
    return a.get("lookup_hits", a.get("hits")), a.get("downloads")


def _print_lookups(results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        if r["status"] == "hit":
            a = r["artifact"]
            lookup_hits, downloads = usage_counts(a)
            detail = (f"{len(a['files'])} file(s), {output.human_bytes(sum(f['size'] for f in a['files']))}, "
                      f"compiled in {output.human_seconds(a.get('compile_seconds'))}, {lookup_hits or 0} lookup hit(s)"
                      + (f", {downloads} download(s)" if downloads is not None else ""))
        else:
            detail = r["detail"]
        rows.append([r["name"] or r["label"], r["key"], r["status"], detail])
    output.table(None, ["spec", "key", "result", "detail"], rows)
    for r in results:
        if r["status"] != "miss" or not r["nearest"]:
            continue
        nrows = []
        for n in r["nearest"]:
            differs = n.get("differs") or []
            for i, d in enumerate(differs):
                nrows.append(
                    [n["key"] if i == 0 else "", d.get("field"), _show(d.get("wanted")), _show(d.get("found"))]
                )
            if not differs:
                nrows.append([n["key"], "(identical manifest)", "", ""])
        output.table(f"nearest published for {r['label']}", ["key", "field", "wanted", "found"], nrows)


def _show(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)
