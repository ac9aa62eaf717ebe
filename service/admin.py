"""`neffcache-admin`: token management, run where the service's database is reachable
(NEFFCACHE_DATABASE_URL). The token is printed once; only its hash is stored."""

from __future__ import annotations

import json
import sys

import typer

from neffcache import tokens
from neffcache.db.session import Database
from neffcache.errors import NeffcacheError
from neffcache.settings import Settings

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False)
token_app = typer.Typer(help="Create, revoke and list API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _database() -> Database:
    return Database(Settings().database_url)


@token_app.command("create")
def create(
    name: str = typer.Option(..., help="who uses it, e.g. ci or serving-pods; recorded on jobs and hits"),
    scope: str = typer.Option("read", help="read | write | admin"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Create a token and print it (once)."""
    with _database().session() as session:
        token = tokens.create_token(session, name, scope)
    if as_json:
        print(json.dumps({"name": name, "scope": scope, "token": token}))
    else:
        print(token)
        print(f"created token {name!r} with scope {scope!r}; store it now, it is not shown again", file=sys.stderr)


@token_app.command("revoke")
def revoke(name: str) -> None:
    """Revoke a token: requests with it are refused (401) from now on."""
    with _database().session() as session:
        tokens.revoke_token(session, name)
    print(f"revoked token {name!r}")


@token_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json")) -> None:
    with _database().session() as session:
        rows = [{"name": t.name, "scope": t.scope, "created_at": t.created_at.isoformat(),
                 "revoked": t.revoked_at is not None} for t in tokens.list_tokens(session)]
    if as_json:
        print(json.dumps(rows))
        return
    for row in rows:
        print(f"{row['name']:<24} {row['scope']:<6} {row['created_at']}{'  (revoked)' if row['revoked'] else ''}")


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
