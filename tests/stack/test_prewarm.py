"""An SDK upgrade prepared before it happens, on the running stack with the neuronx-cc test
double: a deployment built for release A (a worker of its own, stopped once it has built), then
`neffcache prewarm --to` release B's compiler (the session's neuronx-cc worker) and `neffcache lock
--compiler`, which writes the new lock only once every entry is ready; release C, which no worker
has, is unbuildable."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import DOUBLE_COMPILE_TIMEOUT_S
from tests.support.api import hlo_model, neuron_spec
from tests.support.cli import Result, cli_runner, write_yaml
from tests.support.in_process import forget_workers

# Three releases of neffcache/data/sdk_releases.json: (neuronx-cc as the double reports it, runtime).
A, RUNTIME_A = "2.25.3371.0+a11ce0a0", "2.32.31.0"  # SDK 2.30.0: built by a worker of this module
B, RUNTIME_B = "2.27.5334.0+2d6a2ba2b", "2.34.10.0"  # SDK 2.32.0: the session's neuronx-cc worker
C = "2.26.6360.0"  # SDK 2.31.x: no worker has it
NAMES = ("encoder", "decoder")


@dataclass
class Deployment:
    spec_file: Path
    lock_a: Path  # its lock for release A
    keys_a: dict[str, str]  # name -> key built for A


@pytest.fixture(scope="module")
def deployment(running, tokens: dict[str, str], stack_settings: dict[str, Any],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """Two graphs (spec entries naming release A's compiler, the runtime left out) compiled on a
    worker for A; that worker is stopped again, as an old release's hosts are."""
    folder = tmp_path_factory.mktemp("deployment")
    specs = []
    for name in NAMES:
        (folder / f"{name}.hlo.pb").write_bytes(hlo_model())
        entry = neuron_spec("sha256:" + "0" * 64, compiler={"name": "neuronx-cc", "version": A, "flags": ["-O2"]})
        entry.pop("runtime")
        entry["model"] = {"path": f"{name}.hlo.pb"}
        specs.append({"name": name, **entry})
    spec_file = write_yaml(folder / "deploy.yaml", specs)
    cli = cli_runner(running.url, tokens["write"])
    worker = running.stack.start_worker(
        "worker-release-a",
        {"worker_backend": "neuronx-cc", "compile_timeout_s": DOUBLE_COMPILE_TIMEOUT_S,
         "worker_runtime_version": RUNTIME_A},
        {"NEURONX_CC_DOUBLE_VERSION": A})
    try:
        built = cli("compile", "--spec", str(spec_file), "--wait", "--timeout", "120", "--json")
        assert built.rc == 0, built.stderr + worker.log_tail()
    finally:
        worker.stop()
        forget_workers(stack_settings["database_url"], worker.pid)
    lock_a = folder / "deploy-a.lock.json"
    locked = cli("lock", "--spec", str(spec_file), "-o", str(lock_a))
    assert locked.rc == 0, locked.stderr
    yield Deployment(spec_file, lock_a, {r["name"]: r["key"] for r in built.json()["results"]})


def entries(result: Result) -> dict[str, dict[str, Any]]:
    """A prewarm's entries by source (the spec entry's name, or the source artifact's key)."""
    return {e["spec"] or e["source_key"]: e for e in result.json()["entries"]}


def test_prewarm_builds_release_b_and_the_new_lock_waits_for_every_entry(
        cli, api: httpx.Client, deployment: Deployment, tmp_path: Path) -> None:
    lock_b = tmp_path / "deploy-b.lock.json"
    early = cli("lock", "--spec", str(deployment.spec_file), "--compiler", B, "-o", str(lock_b))
    assert early.rc == 4, early.stderr
    lines = early.stderr.strip().splitlines()
    for name in NAMES:  # each missing entry on a line of its own, with its state
        assert any(line.startswith(str(deployment.spec_file)) and f"({name}): not built" in line for line in lines)
    assert "2 of 2 not ready for compiler 2.27.5334.0+2d6a2ba2b, nothing was written" in lines[-1]
    assert not lock_b.exists()

    submitted = cli("prewarm", "--to", B, "--spec", str(deployment.spec_file), "--json")
    assert submitted.rc == 4, submitted.stderr  # compiling: not ready yet
    first = entries(submitted)
    assert {e["status"] for e in first.values()} == {"compiling"}
    assert {e["runtime"]["version"] for e in first.values()} == {RUNTIME_B}  # the SDK table pairs B with it
    assert all(e["key"] != deployment.keys_a[name] for name, e in first.items())

    # From the lock of release A, the same keys: joined (or already built), never compiled twice.
    waited = cli("prewarm", "--to", B, "--lock", str(deployment.lock_a), "--wait", "--json")
    assert waited.rc == 0, waited.stderr
    assert waited.json()["totals"]["ready"] == 2
    by_source = entries(waited)
    assert {by_source[deployment.keys_a[name]]["key"] for name in NAMES} == {e["key"] for e in first.values()}
    for e in first.values():
        jobs = [j for j in api.get("/v1/jobs", params={"limit": 200}).json()["jobs"] if j["key"] == e["key"]]
        assert [j["id"] for j in jobs] == [e["job_id"]] and jobs[0]["state"] == "succeeded"

    made = cli("lock", "--spec", str(deployment.spec_file), "--compiler", B, "-o", str(lock_b))
    assert made.rc == 0, made.stderr
    locked = lock_b.read_text()
    for e in first.values():
        assert e["key"] in locked
    assert RUNTIME_B in locked and RUNTIME_A not in locked

    # What each toolchain serves: A's artifacts (no live worker any more) and B's new ones.
    serving = {(t["compiler"], t["runtime"]): t for t in api.get("/v1/toolchains").json()["serving"]}
    old, new = serving[(f"neuronx-cc=={A}", RUNTIME_A)], serving[(f"neuronx-cc=={B}", RUNTIME_B)]
    assert old["artifacts"] == 2 and old["live"] is False and old["bytes"] > 0
    assert new["artifacts"] >= 2 and new["live"] is True
    assert old["sdk_releases"] == ["2.30.0"]


def test_an_artifact_rekeyed_for_its_own_release_is_itself(cli, deployment: Deployment) -> None:
    # The farm's own manifests, given back as specs (neffcache.key.spec_for_manifest): their own keys.
    same = cli("prewarm", "--to", A, "--lock", str(deployment.lock_a), "--json")
    assert same.rc == 0, same.stderr
    assert {k: e["key"] for k, e in entries(same).items()} == {k: k for k in deployment.keys_a.values()}
    assert {e["status"] for e in entries(same).values()} == {"ready"}


def test_a_release_no_worker_has_is_unbuildable(cli, deployment: Deployment, tmp_path: Path) -> None:
    r = cli("prewarm", "--to", C, "--spec", str(deployment.spec_file), "--json")
    assert r.rc == 4, r.stderr
    for e in entries(r).values():
        assert e["status"] == "unbuildable" and e["error"] == "toolchain_unavailable"
        assert f"no live worker offers neuronx-cc=={C} for target trn1 (neuron-runtime 2.33.10.0)" in e["reason"]
    human = cli("prewarm", "--to", C, "--spec", str(deployment.spec_file))
    assert human.rc == 4 and "unbuildable: no live worker offers" in human.stdout
    lock_c = tmp_path / "deploy-c.lock.json"
    refused = cli("lock", "--spec", str(deployment.spec_file), "--compiler", C, "-o", str(lock_c))
    assert refused.rc == 4 and "(encoder): unbuildable: no live worker" in refused.stderr
    assert not lock_c.exists()
