"""`pull` (fail closed, into a folder or a libneuronxla cache) and `lock` (what a deployment pulls)."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from neffcache.client import output
from neffcache.client.cli import session
from neffcache.client.cli.options import JsonOpt, SpecOpt, TokenOpt, UrlOpt
from neffcache.client.download import download_all
from neffcache.client.lockfile import (
    LOCK_FILE_NAME,
    dump,
    lock_document,
    read_lock,
    write_lock,
)
from neffcache.client.pull import (
    LNC_ENV,
    PullPlan,
    Wanted,
    check_file_names,
    check_lnc,
    check_origin,
    check_runtimes,
    plan,
    resolve,
    resolve_locked,
)
from neffcache.client.runtime import RuntimeResolver
from neffcache.errors import IntegrityFailure, UsageError

if TYPE_CHECKING:
    from neffcache.client.api import NeffcacheClient
    from neffcache.client.neuron_cache_restore import CacheRestore
    from neffcache.client.specs import SpecEntry


class Origin(StrEnum):
    """Where an artifact's bytes came from, as the service records it (db.models.ORIGINS)."""

    farm = "farm"
    pushed = "pushed"


KeysArg = Annotated[list[str] | None, typer.Argument(metavar="KEY", help="Artifact keys.", show_default=False)]


def pull_cmd(
    keys: KeysArg = None,
    dest: Annotated[Path | None, typer.Option("--dest", metavar="DIR", help="Folder to pull into: DIR/<key>/<file>, "
                                                 f"and DIR/{LOCK_FILE_NAME} recording what was pulled.",
                                                 show_default=False)] = None,
    into_neuron_cache: Annotated[Path | None, typer.Option(
        "--into-neuron-cache", metavar="DIR", help="Restore each artifact as a libneuronxla cache entry instead: "
        "DIR/neuronxcc-<version>/MODULE_*/ with model.neff, compile_flags.json, the HLO, and model.done last.",
        show_default=False)] = None,
    into: Annotated[Path | None, typer.Option(
        "--into", metavar="DIR", help="Restore one folder artifact (push --dir) as DIR itself, atomically; a DIR "
        "that holds it already is left alone.", show_default=False)] = None,
    spec: SpecOpt = None,
    lock: Annotated[Path | None, typer.Option("--lock", metavar="FILE", help="Pull exactly what this lock file "
                                                 "(neffcache lock) names: no key is computed, every digest must match.",
                                                 show_default=False)] = None,
    runtime_version: Annotated[list[str] | None, typer.Option(
        "--runtime-version", metavar="V", help="Local runtime version (V, or NAME=V for one runtime) "
        "[env NEFFCACHE_RUNTIME_VERSION; else detected].", show_default=False)] = None,
    parallel: Annotated[int, typer.Option("--parallel", metavar="N", help="Files downloaded at once.",
                                          min=1, max=64)] = 4,
    require_origin: Annotated[Origin | None, typer.Option(
        "--require-origin", help="Pull only artifacts the farm compiled (farm) or only pushed ones (pushed).",
        show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Pull artifacts, fail closed: resolve everything first; any miss writes nothing (exit 4).

    Refused before anything is written (exit 5): an artifact built for another runtime; with
    NEURON_LOGICAL_NC_CONFIG set, a NEFF built for another number of logical NeuronCores; with
    --require-origin farm, an artifact pushed from elsewhere instead of compiled by the farm.
    """
    given = [o for o, p in (("--dest", dest), ("--into", into), ("--into-neuron-cache", into_neuron_cache))
             if p is not None]
    if not given:
        raise UsageError("--dest DIR (or --into DIR, --into-neuron-cache DIR) is required")
    if len(given) > 1:
        raise UsageError(f"give one of --dest DIR, --into DIR and --into-neuron-cache DIR, not {' and '.join(given)}")
    if lock is not None and (keys or spec):
        raise UsageError("--lock FILE pulls exactly what the lock names: give it without KEYs or --spec")
    if not keys and not spec and lock is None:
        raise UsageError("nothing to pull: give artifact KEYs, --spec FILE or --lock FILE")
    session.check_keys(keys)
    folder = dest if dest is not None else into if into is not None else into_neuron_cache
    assert folder is not None
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{given[0]} {folder} exists and is not a folder")
    locked = read_lock(lock) if lock is not None else None
    entries = _spec_entries(spec)  # hashed only: a lookup does not need the model uploaded
    resolver = RuntimeResolver(runtime_version or [], session.settings(url, token).runtime_version)
    lock_path = dest / LOCK_FILE_NAME if dest is not None else None
    with session.open_client(url, token, max_connections=max(parallel * 2, 8)) as client:
        if locked is not None:
            wanted = resolve_locked(client, locked, f"lock file {lock}")
        else:
            # Keys may be prefixes: each Wanted carries the whole key the service answered with.
            wanted = resolve(client, list(dict.fromkeys(keys or [])), entries)
        check_origin(wanted, require_origin.value if require_origin is not None else None)
        check_runtimes(wanted, resolver)
        check_lnc(wanted, os.environ.get(LNC_ENV))
        if into is not None:
            _pull_folder(client, wanted, into, parallel, json_out)
            return
        if into_neuron_cache is not None:
            # imported when needed: see the package docstring
            from neffcache.client.neuron_cache_restore import plan_neuron_cache, restore_into_neuron_cache

            restores = plan_neuron_cache(client, wanted, into_neuron_cache)
            total = sum(r.neff.size + r.hlo.size for r in restores)
            with output.transfer_progress() as progress:
                task = progress.add_task(f"restore {len(restores)} entr{'y' if len(restores) == 1 else 'ies'}",
                                         total=total)
                restore_into_neuron_cache(client, restores, parallel, lambda n: progress.advance(task, n))
        else:
            assert dest is not None and lock_path is not None
            files = _plan_dest(wanted, dest)
            with output.transfer_progress() as progress:
                task = progress.add_task(f"pull {len(files)} file(s)", total=sum(f.size for f in files))
                # All or nothing: the files, then the lock file recording them.
                download_all(client, files, parallel, lambda n: progress.advance(task, n), lock_path=lock_path,
                             lock_doc=lock_document(client.url, wanted))
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


def _pull_folder(client: NeffcacheClient, wanted: list[Wanted], into: Path, parallel: int, json_out: bool) -> None:
    """`pull --into DIR`: one artifact, restored as DIR (client/folders.py)."""
    from neffcache.client.folders import pull_into  # imported when needed: see the package docstring

    if len(wanted) != 1:
        raise UsageError(f"--into DIR restores one artifact, and {len(wanted)} were named; nothing was pulled")
    item = wanted[0]
    with output.transfer_progress() as progress:
        task = progress.add_task(f"pull {into}", total=sum(int(f["size"]) for f in item.artifact["files"]))
        files = pull_into(client, item, into, parallel, lambda n: progress.advance(task, n))
    fetched = sum(1 for f in files if f.status == "downloaded")
    if json_out:
        output.print_json({"into": str(into), "key": item.key, "requested_as": item.requested_as,
                           "runtime": item.artifact["manifest"]["runtime"],
                           "files": [{"name": str(f.path.relative_to(into).as_posix()), "sha256": f.sha256,
                                      "size": f.size, "status": f.status} for f in files]})
        return
    output.say(f"pulled artifact {item.key} into {into}: {fetched} file(s) downloaded, "
               f"{len(files) - fetched} already present, every sha256 verified")


def check_locked_names(item: Wanted) -> None:
    """Every file name of an artifact `neffcache lock` records safe where it is pulled: a folder
    artifact's paths under --into DIR, any other's names under DEST/<key>/ (exit 5 otherwise)."""
    from neffcache.client.folders import is_folder_artifact, tree_files

    if is_folder_artifact(item.artifact):
        tree_files(item, Path(), "nothing was written")
    else:
        check_file_names(item, "nothing was written")


def _plan_dest(wanted: list[Wanted], dest: Path) -> PullPlan:
    """`plan`; a folder artifact's paths are refused there like any name with a separator (exit 5),
    and the refusal then says where such an artifact goes."""
    try:
        return plan(wanted, dest)
    except IntegrityFailure as exc:
        from neffcache.client.folders import is_folder_artifact

        folders = [w.key for w in wanted if is_folder_artifact(w.artifact)]
        if folders:
            exc.detail += f"; artifact {folders[0]} is a folder (published with push --dir): pull it with --into DIR"
            exc.args = (exc.detail,)
        raise


def _spec_entries(spec: list[Path] | None) -> list[SpecEntry]:
    """The --spec files' entries, their models hashed; none without --spec, and then client/specs.py
    is not even imported (see the package docstring)."""
    if not spec:
        return []
    from neffcache.client.specs import hash_models, load_spec_files

    entries = load_spec_files(spec)
    hash_models(entries)
    return entries


def _report_neuron_cache_pull(root: Path, restores: list[CacheRestore], lock: Path | None, json_out: bool) -> None:
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


def lock_cmd(
    keys: Annotated[list[str] | None, typer.Argument(metavar="KEY", help="Artifact keys (besides --spec).",
                                                        show_default=False)] = None,
    spec: SpecOpt = None,
    output_file: Annotated[Path | None, typer.Option("--output", "-o", metavar="FILE", help="Write the lock here "
                                                        "(default: stdout).", show_default=False)] = None,
    pin: Annotated[str | None, typer.Option("--pin", metavar="NAME", help="Then pin every artifact the lock names "
                                               "under NAME (replacing that pin), so eviction never removes them.",
                                               show_default=False)] = None,
    pin_expires_in: Annotated[str | None, typer.Option("--pin-expires-in", metavar="DURATION", help="The pin "
                                                          "protects nothing after this long, e.g. 30d (default: "
                                                          "until removed).", show_default=False)] = None,
    compiler: Annotated[str | None, typer.Option("--compiler", metavar="VERSION", help="Lock the --spec entries "
                                                    "built for this compiler (a new SDK release's, see `neffcache "
                                                    "prewarm`) instead of the versions they name.",
                                                    show_default=False)] = None,
    runtime: Annotated[str | None, typer.Option("--runtime", metavar="VERSION", help="With --compiler: the runtime "
                                                   "(default: the SDK release's).", show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write a deployment lock file: each spec's key and its files' names, digests and sizes.

    `neffcache pull --lock FILE --dest DIR` then pulls exactly those, without asking the service to
    compute any key. Any spec not published: exit 4, nothing written. An artifact whose file
    names would be unsafe on disk (which `pull` refuses): exit 5, nothing written. With --pin, a
    pin the service refuses exits with its error's code, the lock written already. With --compiler,
    every entry must be ready for that toolchain (else each one not ready is named with its state,
    exit 4, nothing written).
    """
    if not keys and not spec:
        raise UsageError("nothing to lock: give --spec FILE (or artifact KEYs)")
    if pin_expires_in is not None and pin is None:
        raise UsageError("--pin-expires-in is the expiry of --pin NAME: give --pin too")
    if runtime is not None and compiler is None:
        raise UsageError("--runtime VERSION goes with --compiler VERSION")
    if compiler is not None and (keys or not spec):
        raise UsageError("--compiler VERSION locks the --spec entries rebuilt for it: give --spec FILE, without KEYs")
    session.check_keys(keys)
    if output_file is not None and output_file.exists() and output_file.is_dir():
        raise UsageError(f"--output {output_file} is a folder")
    entries = _spec_entries(spec)
    with session.open_client(url, token) as client:
        if compiler is not None:
            from neffcache.client.cli.prewarm import ready_for_toolchain

            wanted = ready_for_toolchain(client, entries, compiler, runtime, "nothing was written")
        else:
            # Keys may be prefixes: the lock records the whole key the service answered with.
            wanted = resolve(client, list(dict.fromkeys(keys or [])), entries, "nothing was written")
        for item in wanted:  # names `pull --lock` would refuse are not locked (exit 5)
            check_locked_names(item)
        doc: dict[str, Any] = lock_document(client.url, wanted)
        _write_lock_doc(doc, output_file, json_out)
        if pin is not None:
            from neffcache.client.cli.pin import pin_lock

            pin_lock(client, pin, [w.key for w in wanted], pin_expires_in,
                     f"to {output_file}" if output_file is not None else "to stdout")


def _write_lock_doc(doc: dict[str, Any], output_file: Path | None, json_out: bool) -> None:
    """The lock on stdout, or in `output_file` (and on stdout too with --json), saying so."""
    if output_file is None:
        output.write(dump(doc))
        return
    write_lock(output_file, doc)
    if json_out:
        output.write(dump(doc))
    n_files = sum(len(a["files"]) for a in doc["artifacts"])
    output.say(f"locked {len(doc['artifacts'])} artifact(s), {n_files} file(s), in {output_file}")
