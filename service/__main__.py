"""`neffcache-server`: run the API (`serve`) or bring the database schema up to date (`migrate`)."""

from __future__ import annotations

import argparse
import sys

from neffcache import logs
from neffcache.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neffcache-server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument("--migrate", action="store_true", help="apply database migrations first")
    sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    args = parser.parse_args(argv)
    settings = Settings()
    logs.configure(settings.log_format)
    if args.command == "migrate" or args.migrate:
        from neffcache.db.migrate import upgrade

        upgrade(settings.database_url)
        if args.command == "migrate":
            return 0
    import uvicorn

    uvicorn.run(
        "neffcache.service.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="info",
        # The handlers are the app's (neffcache.logs, set up in app_from_env in each process), and
        # the request log (service.request_log) replaces uvicorn's access log.
        log_config=None,
        access_log=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
