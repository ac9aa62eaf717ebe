"""Looking at the cache: `ls`, `show`, `stats`, `hits`, `workers`, `toolchains`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from neffcache.client import output
from neffcache.client.cli import session
from neffcache.client.cli.compile import usage_counts
from neffcache.client.cli.options import JsonOpt, LimitOpt, TokenOpt, UrlOpt
from neffcache.digests import is_digest
from neffcache.errors import NotFound, UsageError


def ls_cmd(
    model: Annotated[str | None, typer.Option("--model", metavar="DIGEST|FILE",
                                                 help="Model digest, or a model file to hash.",
                                                 show_default=False)] = None,
    target: Annotated[str | None, typer.Option("--target", metavar="TARGET", show_default=False)] = None,
    compiler: Annotated[str | None, typer.Option("--compiler", metavar="C", help="Name, version, or name==version.",
                                                    show_default=False)] = None,
    limit: LimitOpt = 50,
    cursor: Annotated[str | None, typer.Option("--cursor", metavar="CURSOR", help="Continue a listing.",
                                                  show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """List published artifacts, newest first."""
    if model and not is_digest(model):
        path = Path(model)
        if not path.is_file():
            raise UsageError(f"--model {model!r} is neither a sha256:<hex> digest nor a file")
        from neffcache.client.specs import sha256_file  # imported when needed: see the package docstring

        model = sha256_file(path)
    with session.open_client(url, token) as client:
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


def show_cmd(
    key: Annotated[str, typer.Argument(metavar="KEY", help="Artifact key.", show_default=False)],
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """One artifact: its manifest, files and hits."""
    session.check_keys([key])
    with session.open_client(url, token) as client:
        a = client.artifact(key)
    if json_out:
        output.print_json(a)
        return
    m = a["manifest"]
    lookup_hits, downloads = usage_counts(a)
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
        ["origin", _origin(a)],
        ["job", a.get("job_id") or ""],
        ["lookup hits", "" if lookup_hits is None else lookup_hits],
        ["downloads", "" if downloads is None else downloads],
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


def _origin(artifact: dict[str, Any]) -> str:
    """'farm (requested by ci)', 'pushed by dev-laptop', or '' from a service too old to say."""
    origin = artifact.get("origin") or {}
    kind, token = origin.get("kind"), origin.get("token")
    if kind == "farm":
        return "farm, compiled by a worker" + (f" (requested by {token})" if token else "")
    if kind == "pushed":
        return "pushed, built elsewhere" + (f" (by {token})" if token else "")
    return kind or ""


def _bits(value: Any) -> str:
    return f"{value} (0x{value:x})" if isinstance(value, int) else ("" if value is None else str(value))


def stats_cmd(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Hit rate and compile time saved, in total and by target and compiler."""
    with session.open_client(url, token) as client:
        s = client.stats()
        try:
            storage: dict[str, Any] | None = client.storage()
        except NotFound:  # a service older than GET /v1/storage
            storage = None
    if json_out:
        output.print_json({**s, "storage": storage} if storage is not None else s)
        return

    def row(name: str, v: dict[str, Any]) -> list[Any]:
        rate = v.get("hit_rate")
        return [name, v.get("lookups"), usage_counts(v)[0], v.get("misses"),
                "" if rate is None else f"{rate * 100:.1f}%", output.human_seconds(v.get("compile_seconds_saved"))]

    rows = [row("all", s)]
    rows += [row(f"target {t}", v) for t, v in sorted(s.get("by_target", {}).items())]
    rows += [row(c, v) for c, v in sorted(s.get("by_compiler", {}).items())]
    output.table(None, ["", "lookups", "lookup hits", "misses", "hit rate", "compile time saved"], rows)
    output.line(f"downloads {s.get('downloads', 0)}, compiles succeeded {s.get('compiles_succeeded', 0)}, "
                f"failed {s.get('compiles_failed', 0)}")
    if storage is not None:
        _storage_lines(storage)


def _storage_lines(storage: dict[str, Any]) -> None:
    """Stored and pinned bytes against the quotas, the last GC pass, and why it fell short."""
    quota = storage.get("quota_bytes")
    against = f" of a {output.human_bytes(quota)} quota" if quota is not None else " (no quota)"
    output.line(f"stored {output.human_bytes(storage['stored_bytes'])}{against} in {storage['artifacts']} artifacts, "
                f"{output.human_bytes(storage['pinned_bytes'])} pinned")
    for namespace, v in storage.get("by_namespace", {}).items():
        if v.get("quota_bytes") is not None:
            output.line(f"  namespace {namespace}: {output.human_bytes(v['stored_bytes'])} of a "
                        f"{output.human_bytes(v['quota_bytes'])} quota, {output.human_bytes(v['pinned_bytes'])} pinned")
    last = storage.get("last_gc")
    if last:
        evicted, deleted = output.human_bytes(last["evicted_bytes"]), output.human_bytes(last["bytes_deleted"])
        output.line(f"last gc {output.when(last['finished_at'] or last['started_at'])}: evicted "
                    f"{last['evicted_artifacts']} artifacts ({evicted}), deleted {last['objects_deleted']} "
                    f"objects ({deleted})")
    for blocked in storage.get("blocked", []):
        output.say(f"eviction is blocked: {blocked}")


def hits_cmd(
    key: Annotated[str | None, typer.Argument(metavar="KEY", help="Only this artifact.", show_default=False)] = None,
    caller: Annotated[str | None, typer.Option("--caller", metavar="NAME", help="Only this token's hits.",
                                                  show_default=False)] = None,
    limit: LimitOpt = 50,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Which token hit which artifact, and when (newest first); hits older than the service's
    event retention are counted per hour (`count`, `when`: the hour)."""
    if key is not None:
        session.check_keys([key])
    with session.open_client(url, token) as client:
        body = client.hits(key, limit, caller)
    if json_out:
        output.print_json(body)
        return
    rows = [[h.get("at") and output.when(h["at"]), h.get("count", 1), h.get("caller") or "(anonymous)", h.get("kind"),
             h.get("outcome"), h.get("key")] for h in body.get("hits", [])]
    if not rows:
        output.say("no hits recorded" + (f" for {key}" if key else ""))
        return
    output.table(None, ["when", "count", "caller", "kind", "outcome", "key"], rows)


def workers_cmd(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Registered compile workers, their toolchains and whether they are alive."""
    with session.open_client(url, token) as client:
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


def toolchains_cmd(json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Neuron SDK releases (which neuronx-cc and runtime ship together, which have live workers),
    the toolchains live workers offer, and every toolchain that serves artifacts: how many, how many
    bytes, and its share of last week's lookup hits (an old release serving none can be retired)."""
    with session.open_client(url, token) as client:
        body = client.toolchains()
    if json_out:
        output.print_json(body)
        return
    releases = body.get("releases", [])
    output.table("SDK releases", ["sdk", "neuronx-cc", "runtime", "torch-neuronx", "live workers", *_USAGE],
                 [[r.get("sdk"), ", ".join(r.get("neuronx_cc", [])), ", ".join(r.get("runtime", [])),
                   ", ".join(r.get("torch_neuronx", [])), r.get("live_workers") or "", *_usage(r)] for r in releases])
    serving = body.get("serving")
    if serving:
        output.table("toolchains serving artifacts", ["compiler", "runtime", "live", *_USAGE, "SDK releases"],
                     [[t.get("compiler"), t.get("runtime"), "yes" if t.get("live") else "no", *_usage(t),
                       ", ".join(t.get("sdk_releases") or [])] for t in serving])
    live = body.get("live", [])
    if not live:
        output.say("no live workers")
        return
    output.table("live toolchains", ["compiler", "runtime", "with", "workers", *_USAGE, "SDK releases"],
                 [[t.get("compiler"), t.get("runtime"), t.get("packages") or "", t.get("workers"), *_usage(t),
                   ", ".join(t.get("sdk_releases") or [])] for t in live])


_USAGE = ["artifacts", "size", "lookup hits (7 d)", "share"]


def _usage(row: dict[str, Any]) -> list[Any]:
    """A toolchain's (or release's) artifacts, their size, and its lookup hits and their share; blank
    where the service does not say (an older one)."""
    if "artifacts" not in row:
        return ["", "", "", ""]
    share = row.get("lookup_hits_share")
    return [row["artifacts"] or "", output.human_bytes(row.get("bytes")) if row["artifacts"] else "",
            row.get("lookup_hits") or "", "" if share is None else f"{share * 100:.1f}%"]
