"""Several API processes stay correct: two real API processes (`python -m neffcache.service
serve`) on the session's database and Redis, each keeping what the hit path reads for a minute
(hot_cache_s 60). What one of them, `neffcache-admin`, a worker or the garbage collection changes,
the other stops showing within BOUND_S, because it is told (neffcache.invalidation): waiting out
what it keeps would take HOT_CACHE_S. Without Redis, hot_cache_s is the bound
(tests/unit/service/test_invalidation.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import delete

from neffcache.db.models import Artifact
from neffcache.db.session import Database
from neffcache.invalidation import Invalidation, announce, channel
from neffcache.key import key_for_spec
from neffcache.queue import connect_redis
from neffcache.spec import CompileSpec
from tests.support.api import NEURON_COMPILER, NEURON_RUNTIME, error_body, hlo_model, neuron_spec, upload
from tests.support.in_process import forget_workers
from tests.support.rq_keys import delete_run_keys, run_leftovers
from tests.support.stack import Stack

HOT_CACHE_S = 60.0
BOUND_S = 3.0  # a correctness bound far below HOT_CACHE_S, not a timing measurement
# A toolchain only this module's worker has: neuronx-cc and runtime of Neuron SDK 2.27.x.
COMPILER = "2.22.12471.0+7e57c0de1"
RUNTIME = "2.29.40.0"


@dataclass
class TwoProcesses:
    stack: Stack
    a: str  # the URLs of the two API processes
    b: str
    jobs: list[str] = field(default_factory=list)  # made while a view was stale: cancelled at the end
    workers: list[int] = field(default_factory=list)  # pids, forgotten at the end

    def get(self, url: str, path: str, token: str) -> httpx.Response:
        return httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=30)

    def admin(self, *args: str) -> str:
        """`neffcache-admin ARGS` with this stack's settings (its database, Redis and prefix)."""
        done = subprocess.run([sys.executable, "-m", "neffcache.service.admin", *args], env=self.stack.env(),
                              capture_output=True, text=True, check=True)
        return done.stdout

    def new_token(self) -> tuple[str, str]:
        """(name, token) of a new read token, used on both processes: each keeps its grant."""
        name = f"two-api-{uuid.uuid4().hex[:8]}"
        token = json.loads(self.admin("token", "create", "--name", name, "--scope", "read", "--all-namespaces",
                                      "--json"))["token"]
        for url in (self.a, self.b):
            assert self.get(url, "/v1/stats", token).status_code == 200
        return name, token

    def refuses(self, url: str, token: str) -> Callable[[], bool]:
        return lambda: self.get(url, "/v1/stats", token).status_code == 401


def within_bound(condition: Callable[[], bool], what: str) -> float:
    """Poll until `condition()`; fails past BOUND_S. The seconds it took."""
    start = time.monotonic()
    while not condition():
        waited = time.monotonic() - start
        assert waited < BOUND_S, f"{what}: still not after {waited:.1f} s (hot_cache_s is {HOT_CACHE_S:g} s)"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def two(stack_settings: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoProcesses]:
    # A prefix of its own: its queues and its invalidation channel are this module's alone.
    settings = {**stack_settings, "hot_cache_s": HOT_CACHE_S,
                "queue_prefix": f"neffcache-test-two-{uuid.uuid4().hex[:8]}"}
    stack = Stack(settings, tmp_path_factory.mktemp("two-api-logs"))
    redis = connect_redis(settings["redis_url"])
    made = TwoProcesses(stack, "", "")
    try:
        made.a, made.b = stack.start_server(name="server-a"), stack.start_server(name="server-b")
        stack.create_admin_token(f"two-api-admin-{uuid.uuid4().hex[:8]}")
        listening = channel(settings["queue_prefix"]).encode()
        deadline = time.monotonic() + 30
        while dict(redis.pubsub_numsub(listening)).get(listening, 0) < 2:
            assert time.monotonic() < deadline, "the two API processes do not both listen for invalidations"
            time.sleep(0.1)
        yield made
        for job_id in made.jobs:
            httpx.post(f"{made.a}/v1/jobs/{job_id}/cancel", headers=stack.auth_headers, timeout=30)
    finally:
        stack.stop()
        forget_workers(settings["database_url"], *made.workers)
        delete_run_keys(redis, settings["queue_prefix"])
        left = run_leftovers(redis, settings["queue_prefix"])
        redis.close()
    assert left == ([], []), f"the module left Redis keys: {left}"


def test_a_token_revoked_through_one_process_is_refused_by_the_other_at_once(two: TwoProcesses) -> None:
    name, token = two.new_token()
    revoked = httpx.delete(f"{two.a}/v1/tokens/{name}", headers=two.stack.auth_headers, timeout=30)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    error_body(two.get(two.a, "/v1/stats", token), 401, "unauthorized", "revoked")  # the revoker: before it answered
    within_bound(two.refuses(two.b, token), "process B refuses the token")
    error_body(two.get(two.b, "/v1/stats", token), 401, "unauthorized", "revoked")


def test_a_token_revoked_by_the_admin_command_is_refused_by_every_process_at_once(two: TwoProcesses) -> None:
    name, token = two.new_token()
    two.admin("token", "revoke", name)
    for url in (two.a, two.b):
        within_bound(two.refuses(url, token), f"{url} refuses the token")


def test_a_stopped_workers_toolchain_is_refused_by_the_other_process_at_once(two: TwoProcesses) -> None:
    worker = two.stack.start_worker(
        "worker-two-api", {"worker_backend": "neuronx-cc", "compile_timeout_s": 60, "worker_runtime_version": RUNTIME},
        {"NEURONX_CC_DOUBLE_VERSION": COMPILER})
    two.workers.append(worker.pid)
    headers = two.stack.auth_headers
    with httpx.Client(base_url=two.b, headers=headers, timeout=30) as client:
        digest = upload(client, hlo_model())
    spec = neuron_spec(digest, runtime={"name": "neuron-runtime", "version": RUNTIME})  # the compiler left out
    resolved_key = key_for_spec({**spec, "namespace": "default",
                                 "compiler": {**spec["compiler"], "version": COMPILER}})[1]
    for url in (two.a, two.b):  # each resolves the compiler from its view of the registered toolchains
        miss = httpx.post(f"{url}/v1/lookup", json={"spec": spec}, headers=headers, timeout=30)
        assert error_body(miss, 404, "not_found")["key"] == resolved_key

    worker.stop()
    stopped = [w for w in httpx.get(f"{two.a}/v1/workers", headers=headers, timeout=30).json()["workers"]
               if w["pid"] == worker.pid]
    assert [w["state"] for w in stopped] == ["stopped"]

    def refused() -> bool:
        r = httpx.post(f"{two.b}/v1/compile", json={"spec": spec}, headers=headers, timeout=30)
        if r.status_code == 202:  # a stale view: a job for a toolchain no worker has
            two.jobs.append(r.json()["job"]["id"])
            return False
        error_body(r, 422, "toolchain_unavailable", "compiler.version")
        return True

    within_bound(refused, "process B refuses the spec whose only toolchain stopped")


def test_a_deleted_artifact_is_dropped_by_every_process_once_announced(
        two: TwoProcesses, stack_settings: dict[str, Any]) -> None:
    """As the garbage collection will: delete the row, then announce it (from any process)."""
    spec = neuron_spec(f"sha256:{uuid.uuid4().hex * 2}",
                       compiler={"name": "neuronx-cc", "version": NEURON_COMPILER, "flags": []},
                       runtime={"name": "neuron-runtime", "version": NEURON_RUNTIME})
    manifest, key = key_for_spec(CompileSpec.model_validate(spec).model_dump(mode="json"))
    db = Database(stack_settings["database_url"])
    try:
        with db.session() as session:
            session.add(Artifact.from_manifest(key, manifest, [], compile_seconds=1.0, job_id=None, annotations=None))
        headers = two.stack.auth_headers

        def status(url: str) -> int:
            return httpx.get(f"{url}/v1/artifacts/{key}", headers=headers, timeout=30).status_code

        def forgotten_by(url: str) -> Callable[[], bool]:
            return lambda: status(url) == 404

        assert status(two.a) == status(two.b) == 200  # each keeps it now
        with db.session() as session:
            session.execute(delete(Artifact).where(Artifact.key == key))
        assert status(two.a) == status(two.b) == 200, "shown from memory: nothing was announced yet"

        redis = connect_redis(stack_settings["redis_url"])
        try:
            assert announce(redis, two.stack.settings["queue_prefix"], Invalidation.artifact(key))
        finally:
            redis.close()
        for url in (two.a, two.b):
            within_bound(forgotten_by(url), f"{url} forgets the artifact")
    finally:
        with db.session() as session:
            session.execute(delete(Artifact).where(Artifact.key == key))
        db.dispose()
