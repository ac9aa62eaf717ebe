"""One run of the command: the service it talks to, and checks every command shares.

The root options (`neffcache --url URL --token T COMMAND`) are kept here for the commands, which
also take --url and --token themselves. Every client a command opens goes through `open_client`,
so that the run can say at the end which service answered (`service_note`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from neffcache.client.api import NeffcacheClient
from neffcache.client.config import ClientSettings, load_settings
from neffcache.digests import is_key_prefix
from neffcache.errors import NeffcacheError, UsageError

if TYPE_CHECKING:
    from neffcache.client.specs import SpecEntry


@dataclass
class Run:
    url: str | None = None  # neffcache --url (before the command)
    token: str | None = None
    clients: list[tuple[NeffcacheClient, bool]] = field(default_factory=list)  # (client, its URL is the default)


run = Run()


def reset() -> None:
    global run
    run = Run()


def settings(url: str | None, token: str | None) -> ClientSettings:
    """The environment's settings, overridden by the command's --url/--token, then the root's."""
    return load_settings(url or run.url, token or run.token)


def open_client(url: str | None, token: str | None, max_connections: int = 16) -> NeffcacheClient:
    s = settings(url, token)
    client = NeffcacheClient(s.url, s.token, timeout_s=s.http_timeout_s, max_connections=max_connections)
    run.clients.append((client, s.url_is_default))
    return client


def service_note() -> str | None:
    """Which service answered this run, for people: its URL, and whether it was only the default."""
    for client, is_default in run.clients:
        if client.answered:
            return f"service: {client.url}" + (" (default; set NEFFCACHE_URL)" if is_default else "")
    return None


def check_keys(keys: list[str] | None) -> None:
    """Artifact keys as given on the command line: a whole key or a unique prefix of one."""
    for key in keys or []:
        if not is_key_prefix(key):
            raise UsageError(f"{key!r} is not an artifact key (8 to 64 lowercase hex characters: "
                             "a key, or a unique prefix of one)")


def with_label(entry: SpecEntry, exc: NeffcacheError) -> NeffcacheError:
    """The error, its detail prefixed with the spec it is about."""
    exc.detail = f"{entry.label}: {exc.detail}"
    exc.args = (exc.detail,)
    return exc
