"""The server-side console scripts, as the client-only install sees them.

`pip install neffcache` (no extras) installs every console script, but only the client's
dependencies. These wrappers import the real command lazily, so on a client-only install
`neffcache-server`, `neffcache-worker` and `neffcache-admin` print one line naming the extra to
install and exit 2, instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable

# Import names of what the `server` extra brings; any one missing means it is not installed.
SERVER_PACKAGES = ("fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "rq", "redis", "boto3",
                   "prometheus_client")
MISSING_EXTRA_EXIT = 2


def missing_server_packages() -> list[str]:
    return [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]


def _run(command: str, target: str) -> None:
    # Checked before anything is imported: some commands parse their arguments before they
    # import the server's packages, and `--help` must not pretend the command would work.
    missing = missing_server_packages()
    if missing:
        print(f"{command}: needs the server extra ({', '.join(missing)} not installed): "
              "pip install 'neffcache[server]'", file=sys.stderr)
        sys.exit(MISSING_EXTRA_EXIT)
    module_name, _, attribute = target.partition(":")
    main: Callable[[], int | None] = getattr(importlib.import_module(module_name), attribute)
    sys.exit(main())


def server() -> None:
    _run("neffcache-server", "neffcache.service.__main__:main")


def worker() -> None:
    _run("neffcache-worker", "neffcache.workers.__main__:main")


def admin() -> None:
    _run("neffcache-admin", "neffcache.service.admin:main")
