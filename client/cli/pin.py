"""Pins: `pin add`, `pin rm`, `pin ls`; and what `lock --pin` does after writing the lock."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from neffcache.client import output
from neffcache.client.cli import session
from neffcache.client.cli.options import JsonOpt, TokenOpt, UrlOpt
from neffcache.errors import NeffcacheError, UsageError

if TYPE_CHECKING:
    from neffcache.client.api import NeffcacheClient

app = typer.Typer(
    name="pin",
    help="Pins: named sets of artifacts that eviction never removes (a deployment's lock file). "
    "Only a pin's owner (the token that made it) or an admin token may replace or remove it, "
    "until it expires.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The pin's name (letters, digits, '.', '_', '-').",
                                        show_default=False)]
ExpiresInOpt = Annotated[str | None, typer.Option("--expires-in", metavar="DURATION", help="Protects nothing after "
                                                     "this long, e.g. 90m, 12h, 30d, 2w (default: until removed).",
                                                     show_default=False)]


def pinned_line(pin: dict[str, Any]) -> str:
    """'pinned 3 artifact(s) (1.2 MiB) under deploy-prod, until ...' for a pin just made."""
    until = f", until {output.when(pin['expires_at'], ago=False)}" if pin.get("expires_at") else ", until removed"
    return f"pinned {pin['artifacts']} artifact(s) ({output.human_bytes(pin['bytes'])}) under {pin['name']}{until}"


def pin_lock(client: NeffcacheClient, name: str, keys: list[str], expires_in: str | None, written: str) -> None:
    """`lock --pin NAME`: pin what the lock just written (`written`: to where) names, and say so on stderr.
    A refusal keeps its error (and exit code), its message saying the lock is written."""
    try:
        pin = client.put_pin(name, keys, expires_in=expires_in)
    except NeffcacheError as exc:
        exc.detail = f"the lock was written {written}, but not pinned as {name}: {exc.detail}"
        exc.args = (exc.detail,)
        raise
    output.say(pinned_line(pin))


@app.command("add")
def add_cmd(
    name: NameArg,
    keys: Annotated[list[str] | None, typer.Argument(metavar="KEY", help="Artifact keys (or unique prefixes).",
                                                        show_default=False)] = None,
    lock: Annotated[Path | None, typer.Option("--lock", metavar="FILE", help="Pin every artifact this lock file "
                                                 "(neffcache lock) names, instead of KEYs.",
                                                 show_default=False)] = None,
    expires_in: ExpiresInOpt = None,
    note: Annotated[str | None, typer.Option("--note", metavar="TEXT", help="What the pin is for.",
                                                show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Pin artifacts under NAME, replacing the pin of that name (yours, or anyone's once expired).

    Every artifact must exist (exit 4 naming those that do not; nothing is pinned) and be in the
    token's namespaces (exit 6). Needs a write token.
    """
    if lock is not None and keys:
        raise UsageError("give artifact KEYs or --lock FILE, not both")
    if lock is None and not keys:
        raise UsageError("nothing to pin: give artifact KEYs or --lock FILE")
    if lock is not None:
        from neffcache.client.lockfile import read_lock

        wanted = [item.key for item in read_lock(lock)]
    else:
        session.check_keys(keys)
        wanted = list(dict.fromkeys(keys or []))
    with session.open_client(url, token) as client:
        pin = client.put_pin(name, wanted, expires_in=expires_in, note=note)
    if json_out:
        output.print_json(pin)
        return
    output.line(pinned_line(pin))


@app.command("rm")
def rm_cmd(name: NameArg, json_out: JsonOpt = False, url: UrlOpt = None, token: TokenOpt = None) -> None:
    """Remove the pin NAME: its owner may, or an admin token. Its artifacts stay until evicted."""
    with session.open_client(url, token) as client:
        pin = client.remove_pin(name)
    if json_out:
        output.print_json(pin)
        return
    output.line(f"removed pin {pin['name']} ({pin['artifacts']} artifact(s), {output.human_bytes(pin['bytes'])})")


@app.command("ls")
def ls_cmd(
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="One pin, with its artifacts.",
                                                  show_default=False)] = None,
    json_out: JsonOpt = False,
    url: UrlOpt = None,
    token: TokenOpt = None,
) -> None:
    """Every pin (owner, size, expiry); with NAME, that pin's artifacts and whether each still exists."""
    with session.open_client(url, token) as client:
        body = client.pin(name) if name is not None else client.pins()
    if json_out:
        output.print_json(body)
        return
    if name is not None:
        _show(body)
        return
    if not body["pins"]:
        output.say("no pins")
        return
    output.table(None, ["name", "owner", "artifacts", "missing", "size", "expires", "note"],
                 [[p["name"], p.get("owner") or "", p["artifacts"], p["missing"] or "", output.human_bytes(p["bytes"]),
                   _expiry(p), p.get("note") or ""] for p in body["pins"]])


def _expiry(pin: dict[str, Any]) -> str:
    if not pin.get("expires_at"):
        return "never"
    return output.when(pin["expires_at"], ago=False) + (" (expired)" if pin.get("expired") else "")


def _show(pin: dict[str, Any]) -> None:
    output.table(f"pin {pin['name']}: {pin['artifacts']} artifact(s), {output.human_bytes(pin['bytes'])}; "
                 f"owner {pin.get('owner') or '?'}, created {output.when(pin.get('created_at'))}, "
                 f"expires {_expiry(pin)}" + (f"; {pin['note']}" if pin.get("note") else ""),
                 ["key", "namespace", "size", "exists"],
                 [[e["key"], e.get("namespace") or "", output.human_bytes(e.get("bytes")),
                   "yes" if e["exists"] else "no"] for e in pin["entries"]])
    if pin.get("missing"):
        output.say(f"{pin['missing']} pinned artifact(s) no longer exist")
    if pin.get("hidden"):
        output.say(f"{pin['hidden']} more in namespaces this token may not act in")
