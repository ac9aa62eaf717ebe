"""`neffcache-admin`: token management, run where the service's database is reachable
(NEFFCACHE_DATABASE_URL). The token is printed once; only its hash is stored."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Annotated

import typer

from neffcache import invalidation, tokens
from neffcache.db.models import ApiToken, utcnow
from neffcache.db.session import Database
from neffcache.errors import EXIT_QUOTA_BLOCKED, EXIT_SUCCESS, InvalidParameter, NeffcacheError
from neffcache.settings import Settings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
token_app = typer.Typer(help="Create, revoke and list API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _database() -> Database:
    return Database(Settings().database_url)


@token_app.command("create")
def create(
    name: str = typer.Option(..., help="who uses it, e.g. ci or serving-pods; recorded on jobs and hits"),
    scope: str = typer.Option("read", help="read | write (also compile, cancel) | publish (also push bytes built "
                                           "elsewhere) | admin"),
    namespace: Annotated[list[str] | None, typer.Option(
        "--namespace", metavar="NAMESPACE", help="a namespace it may act in (repeat for several)")] = None,
    all_namespaces: bool = typer.Option(False, "--all-namespaces", help="may act in every namespace"),
    expires_in: str | None = typer.Option(None, "--expires-in", metavar="DURATION",
                                          help="refused after this long, e.g. 90m, 12h, 30d, 2w (default: never)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a token and print it (once). A read, write or publish token names the namespaces it
    may act in (--namespace, repeated) or takes --all-namespaces; an admin token has every
    namespace. The first admin token ends NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN."""
    lifetime = tokens.parse_duration(expires_in) if expires_in is not None else None
    tokens.check_scope(scope)
    if namespace and all_namespaces:
        raise InvalidParameter("namespace: give --namespace or --all-namespaces, not both")
    if not namespace and not all_namespaces and scope != "admin":
        raise InvalidParameter("namespace: say where the token may act: --namespace NAME (repeat for several) "
                               "or --all-namespaces")
    with _database().session() as session:
        token = tokens.create_token(session, name, scope, lifetime, namespace or None)
        row = session.get(ApiToken, name)
        expires_at = row.expires_at if row is not None else None
        namespaces = list(row.namespaces) if row is not None else []
    if as_json:
        print(json.dumps({"name": name, "scope": scope, "namespaces": namespaces, "token": token,
                          "expires_at": expires_at.isoformat() if expires_at else None}))
        return
    print(token)
    until = f", expiring {_when(expires_at)}" if expires_at else ""
    print(f"created token {name!r} with scope {scope!r} in {_where(namespaces)}{until}; store it now, "
          "it is not shown again", file=sys.stderr)
    if scope == "admin":
        print("an admin token exists now: the service no longer accepts NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN",
              file=sys.stderr)


def _when(ts: datetime | None) -> str:
    return ts.isoformat(timespec="seconds") if ts else "never"


def _where(namespaces: list[str]) -> str:
    return "every namespace" if tokens.ALL_NAMESPACES in namespaces else "namespaces " + ", ".join(namespaces)


@token_app.command("revoke")
def revoke(name: str) -> None:
    """Revoke a token: requests with it are refused (401) from now on."""
    settings = Settings()
    with Database(settings.database_url).session() as session:
        tokens.revoke_token(session, name, invalidation.publisher(settings.redis_url, settings.queue_prefix))
    print(f"revoked token {name!r}")


@token_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json")) -> None:
    """Every token (never the token itself): scope, namespaces ('*': every one), created, expires,
    last used (to the minute)."""
    now = utcnow()
    with _database().session() as session:
        found = tokens.list_tokens(session)
    if as_json:
        print(json.dumps([{"name": t.name, "scope": t.scope, "namespaces": t.namespaces,
                           "created_at": t.created_at.isoformat(),
                           "expires_at": t.expires_at.isoformat() if t.expires_at else None,
                           "last_used_at": t.last_used_at.isoformat() if t.last_used_at else None,
                           "revoked": t.revoked_at is not None, "expired": tokens.expired(t, now)} for t in found]))
        return
    print(f"{'NAME':<24} {'SCOPE':<7} {'NAMESPACES':<20} {'CREATED':<25} {'EXPIRES':<25} LAST USED")
    for t in found:
        state = "  (revoked)" if t.revoked_at is not None else "  (expired)" if tokens.expired(t, now) else ""
        print(f"{t.name:<24} {t.scope:<7} {','.join(t.namespaces):<20} {_when(t.created_at):<25} "
              f"{_when(t.expires_at):<25} {_when(t.last_used_at)}{state}")


@app.command("scrub")
def scrub(
    sample: int | None = typer.Option(None, "--sample", min=1, metavar="N",
                                      help="check N objects chosen at random (default: all of them)"),
    quarantine: bool = typer.Option(False, "--quarantine",
                                    help="move corrupt objects aside (quarantine/), so the next upload recreates them"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify stored objects against their sha256 (NEFFCACHE_STORAGE_URL): one line per corrupt one,
    then a summary. Exit 5 if any is corrupt, 6 if some could not be read."""
    from neffcache.storage import open_store
    from neffcache.storage.scrub import scrub as scrub_store

    report = scrub_store(open_store(Settings()), sample=sample, quarantine=quarantine)
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        for found in report.corrupt:
            aside = f"; moved to {found.quarantined}" if found.quarantined else ""
            print(f"corrupt {found.digest} ({found.size} bytes): hashes to {found.actual}{aside}")
        for failed in report.unreadable:
            print(f"unreadable {failed.digest}: {failed.detail}")
        print(report.summary())
    # sys.exit, not typer.Exit: with standalone_mode=False click returns an Exit's code from
    # app() instead of raising it, and main() would exit 0.
    sys.exit(report.exit_code)


@app.command("gc")
def gc_(
    dry_run: bool = typer.Option(False, "--dry-run", help="print what would go, and how many bytes; change nothing"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Evict by TTL and quota (never a pinned artifact), sweep unused blobs, old jobs and orphan
    objects, delete what was marked a grace period ago, roll up old cache events
    (NEFFCACHE_GC_* settings; README, "Quota, eviction and GC"). The workers run the same pass
    every NEFFCACHE_GC_INTERVAL_S; one pass runs at a time (when another holds the lease this one
    says so and does nothing). Exit 0; 7 when eviction stops short of a quota because pinned
    artifacts alone exceed it."""
    import socket

    from neffcache import gc
    from neffcache.storage import open_store

    settings = Settings()
    report = gc.run_gc(Database(settings.database_url), open_store(settings), settings,
                       holder=f"neffcache-admin@{socket.gethostname()}", dry_run=dry_run,
                       announce=invalidation.publisher(settings.redis_url, settings.queue_prefix))
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        if dry_run:
            for e in report.evicted:
                print(f"evict {e.key} ({e.namespace}, {e.size} bytes, last used {_when(e.last_used)}): {e.reason}")
            for digest, size in report.blobs:
                print(f"blob {digest} ({size} bytes): unused")
            for digest, size in report.objects_due:
                print(f"object {digest} ({size} bytes): marked and past the grace period")
        print(report.summary())
    sys.exit(EXIT_QUOTA_BLOCKED if report.blocked else EXIT_SUCCESS)


def main() -> None:
    try:
        app(standalone_mode=False)
    except NeffcacheError as exc:
        print(f"neffcache-admin: {exc.detail}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - click usage errors and database errors: one line, no traceback
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        print(f"neffcache-admin: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(6)


if __name__ == "__main__":
    main()
