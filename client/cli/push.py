"""A libneuronxla cache folder: `compile --from-neuron-cache` (the entries without a NEFF) and
`push` (publish the NEFFs a host already compiled)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from neffcache import errors
from neffcache.client import neuron_cache, output
from neffcache.client.cli import session
from neffcache.client.cli.exits import conclude
from neffcache.client.cli.options import JsonOpt, NamespaceOpt, SpecOpt, TokenOpt, UrlOpt
from neffcache.client.cli.progress import (
    follow,
    status_text,
    upload_files,
    upload_missing,
)
from neffcache.errors import (
    EXIT_UNAVAILABLE,
    ArtifactExists,
    NeffcacheError,
    UsageError,
)

if TYPE_CHECKING:
    from neffcache.client.specs import SpecEntry

UNFINISHED = "model.neff without model.done (a compile in progress, or interrupted)"


def _cache_entries(root: Path) -> list[neuron_cache.CacheEntry]:
    entries = neuron_cache.list_entries(root)
    if not entries:
        raise UsageError(f"{root} holds no libneuronxla cache entries (neuronxcc-<version>/MODULE_*/ folders)")
    return entries


def _cache_spec(entry: neuron_cache.CacheEntry, target: str | None, runtime_version: str | None,
                namespace: str | None) -> SpecEntry:
    """The entry's spec, checked locally (a bad one is a usage error naming the entry)."""
    from neffcache.client.specs import normalise  # imported when needed: see the package docstring

    return normalise(neuron_cache.entry_spec(entry, target, runtime_version, namespace), entry.label, None)


def _entry_row(entry: neuron_cache.CacheEntry) -> dict[str, Any]:
    return {"label": entry.label, "name": entry.module, "entry": entry.label, "compiler_dir": entry.compiler_dir,
            "module": entry.module}


def _refusal(exc: NeffcacheError) -> bool:
    """True when the service refused this one entry (the others may still go); False when the
    service cannot be used at all (unreachable, unauthorised, failing)."""
    return exc.exit_code != EXIT_UNAVAILABLE


def _skipped(entries: list[neuron_cache.CacheEntry], wanted: list[neuron_cache.CacheEntry],
             why: Callable[[neuron_cache.CacheEntry], str]) -> list[dict[str, str]]:
    chosen = {id(e) for e in wanted}
    return [{"entry": e.label, "reason": why(e)} for e in entries if id(e) not in chosen]


def _say_skipped(skipped: list[dict[str, str]]) -> None:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    for reason, n in counts.items():
        output.say(f"skipped {n} entr{'y' if n == 1 else 'ies'}: {reason}")


def compile_from_neuron_cache(root: Path, target: str | None, runtime_version: str | None, namespace: str | None,
                              force: bool, wait: bool, timeout: float | None, interval: float, json_out: bool,
                              url: str | None, token: str | None) -> None:
    from neffcache.client.specs import hash_models  # imported when needed: see the package docstring

    entries = _cache_entries(root)
    todo = [e for e in entries if not e.has_neff]
    skipped = _skipped(entries, todo, lambda e: "already compiled (model.neff and model.done)" if e.has_done
                       else UNFINISHED)
    specs = [(e, _cache_spec(e, target, runtime_version, namespace)) for e in todo]  # all checked before any call
    hash_models([s for _, s in specs])
    results: list[dict[str, Any]] = []
    with session.open_client(url, token) as client:
        upload_missing(client, [s for _, s in specs])
        for entry, spec_entry in specs:
            row = _entry_row(entry)
            try:
                body = client.compile(spec_entry.spec, force=force, annotations=entry.annotations())
            except NeffcacheError as exc:
                if not _refusal(exc):
                    raise session.with_label(spec_entry, exc) from None
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
            follow(client, results, timeout, max(interval, 0.05))
    if json_out:
        output.print_json({"neuron_cache": str(root), "results": results, "skipped": skipped})
    else:
        if results:
            output.table(None, ["entry", "key", "status"],
                         [[r["entry"], r["key"] or "", status_text(r) if r["status"] != "refused"
                           else f"refused ({r['error']}: {r['detail']})"] for r in results])
        else:
            output.say(f"nothing to compile in {root}")
        _say_skipped(skipped)
    conclude(results, timeout=timeout, count_refused=True)


def push_cmd(
    from_neuron_cache: Annotated[Path | None, typer.Option(
        "--from-neuron-cache", metavar="DIR", help="A libneuronxla cache folder: every entry holding model.neff and "
        "model.done is validated and published.", show_default=False)] = None,
    folder: Annotated[Path | None, typer.Option(
        "--dir", metavar="DIR", help="A compiled-artifact folder (NxD Inference's compiled_model_path): published "
        "whole, paths kept, under the key of --spec.", show_default=False)] = None,
    spec: SpecOpt = None,
    target: Annotated[str | None, typer.Option("--target", metavar="TARGET", help="trn1 trn1n inf2 trn2 trn3 "
                                                  "(default: the --target in each entry's compile_flags.json).",
                                                  show_default=False)] = None,
    runtime_version: Annotated[str | None, typer.Option(
        "--runtime-version", metavar="V", help="Runtime the NEFFs are for (default: the runtime of the compiler's "
        "SDK release).", show_default=False)] = None,
    namespace: NamespaceOpt = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Publish the NEFFs a host already compiled into its libneuronxla cache, or (--dir DIR --spec FILE)
    a whole compiled-artifact folder.

    Each cache entry becomes the artifact of the spec `compile --from-neuron-cache` would send (same key,
    same annotations). An invalid NEFF is reported and not sent; the valid ones are still published,
    and the command then exits 5. A key already published (by the farm or another host) is left as it is.
    """
    if folder is not None or spec:
        if from_neuron_cache is not None or target is not None or runtime_version is not None:
            raise UsageError("--dir DIR --spec FILE publishes a folder under the spec's key: give it without "
                             "--from-neuron-cache, --target or --runtime-version (the spec names them)")
        if folder is None or not spec:
            raise UsageError("--dir DIR and --spec FILE go together")
        push_folder(folder, spec, namespace, json_out, url, token)
        return
    if from_neuron_cache is None:
        raise UsageError("nothing to push: give --from-neuron-cache DIR, or --dir DIR --spec FILE")
    from neffcache import neff  # imported when needed: see the package docstring
    from neffcache.client.specs import hash_models, sha256_file

    root = from_neuron_cache
    entries = _cache_entries(root)
    ready = [e for e in entries if e.has_neff_and_done]
    skipped = _skipped(entries, ready, lambda e: UNFINISHED if e.has_neff
                       else "no model.neff (compile it: neffcache compile --from-neuron-cache)")
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
    with session.open_client(url, token) as client:
        upload_files(client, [(s.digest, s.model_path) for _, s, _ in valid if s.model_path is not None]
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
                    raise session.with_label(spec_entry, exc) from None
                row.update(key=exc.extra.get("key"), status="invalid" if exc.code == "invalid_neff" else "refused",
                           error=exc.code, detail=exc.detail)
                continue
            row.update(key=body["key"], status=body["status"], spec=body.get("spec"))
            if body["status"] == "exists":
                row["same_files"] = True
    if json_out:
        output.print_json({"neuron_cache": str(root), "results": results, "skipped": skipped})
    else:
        _print_pushed(root, results, skipped)
    conclude(results)


def push_folder(folder: Path, spec_files: list[Path], namespace: str | None, json_out: bool, url: str | None,
                token: str | None) -> None:
    """`push --dir`: every file checked and hashed here, uploaded unless the service has it, and
    published in one request; the service validates every NEFF and publishes nothing if one is
    not valid (exit 5). A key published already with these files is a success; with others, exit 5."""
    # imported when needed: see the package docstring
    from neffcache.client.folders import check_neffs, digest_files, published_names, scan_folder
    from neffcache.client.specs import hash_models, load_spec_files

    entries = load_spec_files(spec_files)
    if len(entries) != 1:
        raise UsageError(f"--spec: a folder is published under one spec, the file(s) hold {len(entries)}")
    entry = entries[0]
    if namespace is not None:
        entry.spec["namespace"] = namespace
    scanned = scan_folder(folder)
    check_neffs(scanned)
    files = digest_files(scanned)
    hash_models(entries)
    with session.open_client(url, token) as client:
        upload_files(client, ([(entry.digest, entry.model_path)] if entry.model_path is not None else [])
                     + [(digest, f.local) for f, digest in files])
        try:
            body = client.publish(entry.spec, published_names(files))
        except NeffcacheError as exc:
            raise session.with_label(entry, exc) from None
    size = sum(f.size for f, _ in files)
    if json_out:
        output.print_json({"dir": str(folder), "key": body["key"], "status": body["status"],
                           "files": [{"name": f.path, "digest": d, "size": f.size} for f, d in files]})
        return
    verb = "published" if body["status"] == "published" else "already published with these files"
    output.say(f"{folder}: {len(files)} file(s), {output.human_bytes(size)}, {verb} as {body['key']}")


def _print_pushed(root: Path, results: list[dict[str, Any]], skipped: list[dict[str, str]]) -> None:
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
