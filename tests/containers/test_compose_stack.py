"""The production-like stack in containers (deploy/compose.yaml on the images deploy/images.sh
builds): tokens made inside the service container, a compile through the client on the host, a
pull with a read token, the numbers against eager; a worker container killed mid-compile and the
job finished by the other; Redis restarted under queued jobs; and nothing left behind.

Runs only with `-m containers` (`make test-containers`; `.ci/run` after `make test`): it needs
Docker and docker-compose, and several minutes. Each phase prints how long it took.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from neffcache.errors import Forbidden
from tests.support.api import inductor_spec, upload, wait_job
from tests.support.cli import client_env, run_cli
from tests.support.compose import IMAGES_SCRIPT, WORKERS, ComposeStack, Phases, run

pytestmark = pytest.mark.timeout(1200)

# Quick to notice a killed worker: its job is retried once its heartbeat is this old.
FAST_LOSS = {"NEFFCACHE_HEARTBEAT_INTERVAL_S": "1", "NEFFCACHE_WORKER_LOST_AFTER_S": "8",
             "NEFFCACHE_QUEUE_CHECK_INTERVAL_S": "5"}
SHAPE = [4, 16]


@pytest.fixture(scope="module")
def phases() -> Iterator[Phases]:
    timings = Phases()
    yield timings
    print("\n[containers] phase timings:\n" + timings.summary(), flush=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, phases: Phases) -> Iterator[ComposeStack]:
    with phases.phase("deploy/images.sh (build, or confirm from the layer cache)"):
        built = run([str(IMAGES_SCRIPT)], timeout=1800)
        print(built.stderr, flush=True)
    compose = ComposeStack(tmp_path_factory.mktemp("compose"), FAST_LOSS)
    try:
        with phases.phase("docker-compose up (migrations, bucket, 2 API processes, 2 workers)"):
            compose.up()
            compose.wait_workers(WORKERS)
        yield compose
    finally:
        with phases.phase("docker-compose down (containers, networks, volumes)"):
            left = compose.down()
        run([str(IMAGES_SCRIPT), "--stop-daemon"])
    assert left == [], f"left behind: {left}"


@pytest.fixture(scope="module")
def tokens(stack: ComposeStack, phases: Phases) -> dict[str, str]:
    """A write and a read token, made by neffcache-admin inside the service container."""
    made = {}
    with phases.phase("tokens (neffcache-admin in the service container)"):
        for scope in ("write", "read"):
            out = stack.exec("service-a", "neffcache-admin", "token", "create", "--name", f"ct-{scope}",
                             "--scope", scope, "--namespace", "default", "--json")
            made[scope] = json.loads(out)["token"]
    return made


@pytest.fixture
def api(stack: ComposeStack, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url("service-b"), headers={"Authorization": f"Bearer {tokens['write']}"},
                      timeout=30) as client:
        yield client


def held_back_model(path: Path, seed: int) -> tuple[Any, tuple[Any, ...]]:
    """A model no one has compiled: its own seed, so its own digest and key."""
    from tests.support.models import save_tiny_exported_model

    return save_tiny_exported_model(path, batch=SHAPE[0], features=SHAPE[1], seed=seed)


def host_of(stack: ComposeStack, worker_id: str) -> str:
    """The container (its host name: compose.yaml's worker-a, worker-b) a worker runs in."""
    workers = httpx.get(f"{stack.url()}/v1/workers", headers=stack.admin_headers, timeout=10).json()["workers"]
    [host] = [w["host"] for w in workers if w["id"] == worker_id]
    return str(host)


def test_compile_on_the_host_client_pull_with_a_read_token_and_match_eager(
        stack: ComposeStack, tokens: dict[str, str], phases: Phases, tmp_path: Path) -> None:
    import torch

    model, inputs = held_back_model(tmp_path / "model.pt2", seed=1201)
    with phases.phase("compile through the client on the host (miss, compiled by a worker container)"):
        compiled = run_cli(["compile", str(tmp_path / "model.pt2"), "--input", "x=4x16:float32", "--target", "cpu",
                            "--wait", "--timeout", "400", "--json"],
                           client_env(stack.url("service-a"), tokens["write"]), timeout=420)
        assert compiled.rc == 0, compiled.stderr
        [result] = compiled.json()["results"]
        assert result["status"] == "succeeded" and host_of(stack, result["job"]["worker"]) in WORKERS, result
    key = result["key"]
    with phases.phase("pull with the read token (from the other API process) and load on the host"):
        pulled = run_cli(["pull", key, "--dest", str(tmp_path / "pulled"), "--json"],
                         client_env(stack.url("service-b"), tokens["read"]))
        assert pulled.rc == 0, pulled.stderr
        package = torch._inductor.aoti_load_package(str(tmp_path / "pulled" / key / "model.pt2"))
        with torch.no_grad():
            torch.testing.assert_close(package(*inputs), model(*inputs))
    # The read token may look and pull, not compile.
    refused = run_cli(["compile", str(tmp_path / "model.pt2"), "--input", "x=4x16:float32", "--target", "cpu",
                       "--force", "--json"], client_env(stack.url("service-a"), tokens["read"]))
    assert refused.rc == Forbidden.exit_code and "has scope 'read'" in refused.one_line_error()


def test_a_worker_container_killed_mid_compile_leaves_the_job_to_the_other(
        stack: ComposeStack, api: httpx.Client, phases: Phases, tmp_path: Path) -> None:
    held_back_model(tmp_path / "model.pt2", seed=1202)
    with phases.phase("kill a worker container mid-compile; the other finishes the job"):
        digest = upload(api, (tmp_path / "model.pt2").read_bytes())
        submitted = api.post("/v1/compile", json={"spec": inductor_spec(digest, SHAPE)})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job"]["id"]
        running = wait_job(api, job_id, states=("running",), timeout_s=120)
        doomed_host = host_of(stack, running["worker"])
        [survivor_host] = [w for w in WORKERS if w != doomed_host]
        run(["docker", "kill", stack.container(doomed_host)])
        done = wait_job(api, job_id, timeout_s=400)
    assert done["state"] == "succeeded", done
    assert done["attempts"] == 2 and host_of(stack, done["worker"]) == survivor_host, done
    lost = [w for w in api.get("/v1/workers").json()["workers"] if w["id"] == running["worker"]]
    assert lost and lost[0]["state"] == "lost", lost
    # Back for the next test: the killed container started again, a new worker of that host.
    stack.compose("start", doomed_host)
    stack.wait_workers(WORKERS)


def test_jobs_queued_across_a_redis_restart_still_run(
        stack: ComposeStack, api: httpx.Client, phases: Phases, tmp_path: Path) -> None:
    with phases.phase("restart Redis under queued jobs; they run once the workers are back"):
        stack.compose("stop", *WORKERS)
        job_ids = []
        for seed in (1203, 1204):
            held_back_model(tmp_path / f"model-{seed}.pt2", seed=seed)
            digest = upload(api, (tmp_path / f"model-{seed}.pt2").read_bytes())
            submitted = api.post("/v1/compile", json={"spec": inductor_spec(digest, SHAPE)})
            assert submitted.status_code == 202, submitted.text
            job_ids.append(submitted.json()["job"]["id"])
        assert [api.get(f"/v1/jobs/{j}").json()["state"] for j in job_ids] == ["queued", "queued"]
        stack.compose("restart", "redis")
        stack.wait_healthy(("redis",))
        stack.compose("start", *WORKERS)
        done = [wait_job(api, job_id, timeout_s=400) for job_id in job_ids]
    assert [job["state"] for job in done] == ["succeeded", "succeeded"], done
    # Both API processes still answer after the restart, from the same database.
    for service in ("service-a", "service-b"):
        assert httpx.get(f"{stack.url(service)}/v1/jobs/{job_ids[0]}", headers=api.headers,
                         timeout=10).json()["state"] == "succeeded"
