"""service/toolchains.py for torch-neuronx specs: the torch-neuronx, torch, neuronx-cc and runtime
versions resolved from the registered workers and the SDK release table, and the pairs refused.

The SDK table is a small one written here, shaped like neffcache/data/sdk_releases.json."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete

from neffcache import errors
from neffcache.db.models import Worker, utcnow
from neffcache.db.session import Database
from neffcache.sdk import SdkTable
from neffcache.service.toolchains import RegisteredToolchain, registered_toolchains, resolve_spec
from neffcache.spec import CompileSpec
from neffcache.toolchain import COMPILER_PACKAGE, RUNTIME_PACKAGE, TORCH_NEURONX_PACKAGE
from tests.support.in_process import migrated_sqlite

TTL_S = 60.0
TNX_2_31 = "2.9.0.2.15.32035"  # torch-neuronx of SDK 2.31.x (neuronx-cc 2.26.6360.0, runtime 2.33.10.0)
TNX_2_30 = "2.9.0.2.14.27725"  # torch-neuronx of SDK 2.30.0 (neuronx-cc 2.25.3371.0, runtime 2.32.31.0)
CC_2_31 = "2.26.6360.0+a1b2c3d4e"
CC_2_30 = "2.25.3371.0+f00dfeed1"
TORCH = "2.9.0+cpu"

SDK = SdkTable.from_data({"releases": [
    {"sdk": "2.32.0", "packages": {COMPILER_PACKAGE: ["2.27.5334.0"], RUNTIME_PACKAGE: ["2.34.10.0"]}},
    {"sdk": "2.31.1", "packages": {COMPILER_PACKAGE: ["2.26.6360.0"], RUNTIME_PACKAGE: ["2.33.10.0"],
                                   TORCH_NEURONX_PACKAGE: [TNX_2_31]}},
    {"sdk": "2.30.0", "packages": {COMPILER_PACKAGE: ["2.25.3371.0"], RUNTIME_PACKAGE: ["2.32.31.0"],
                                   TORCH_NEURONX_PACKAGE: [TNX_2_30]}},
]})


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path_factory.mktemp("toolchains-tnx")))
    yield database
    database.dispose()


def worker(version: str, cc: str, runtime: str, torch: str = TORCH) -> dict[str, Any]:
    return {"version": version, "cc": cc, "runtime": runtime, "torch": torch}


def register(db: Database, *workers: dict[str, Any]) -> None:
    with db.session() as session:
        session.execute(delete(Worker))
        for i, w in enumerate(workers):
            session.add(Worker(
                id=f"worker-{i}", host="host", pid=2000 + i, compiler_name="torch-neuronx",
                compiler_version=w["version"], runtime_name="neuron-runtime", runtime_version=w["runtime"],
                toolchain={"targets": ["inf2", "trn1"], "packages": {"torch": w["torch"], "neuronx-cc": w["cc"]}},
                queues=[], state="idle", last_heartbeat=utcnow(),
            ))


def spec(**compiler: Any) -> CompileSpec:
    runtime = compiler.pop("runtime", None)
    return CompileSpec.model_validate({
        "model": {"format": "torchscript", "digest": "sha256:" + "ab" * 32},
        "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64"}],
        "target": "inf2",
        "compiler": {"name": "torch-neuronx", **compiler},
        "runtime": {"name": "neuron-runtime", **({"version": runtime} if runtime else {})},
    })


def resolve(db: Database, wanted: CompileSpec) -> tuple[str | None, ...]:
    def toolchains() -> list[RegisteredToolchain]:
        with db.session() as session:
            return registered_toolchains(session, TTL_S)

    resolved = resolve_spec(toolchains, wanted, SDK)
    assert resolved.runtime is not None
    c = resolved.compiler
    return c.version, c.torch_version, c.neuronx_cc_version, resolved.runtime.version


def test_all_left_out_come_from_the_one_worker(db: Database) -> None:
    register(db, worker(TNX_2_31, CC_2_31, "2.33.10.0"))
    assert resolve(db, spec()) == (TNX_2_31, TORCH, CC_2_31, "2.33.10.0")


def test_a_named_runtime_picks_the_worker_whose_neuronx_cc_ships_with_it(db: Database) -> None:
    register(db, worker(TNX_2_31, CC_2_31, "2.33.10.0"), worker(TNX_2_30, CC_2_30, "2.32.31.0"))
    assert resolve(db, spec(runtime="2.32.31.0")) == (TNX_2_30, TORCH, CC_2_30, "2.32.31.0")


def test_a_named_torch_neuronx_narrows_the_candidates(db: Database) -> None:
    register(db, worker(TNX_2_31, CC_2_31, "2.33.10.0"), worker(TNX_2_30, CC_2_30, "2.32.31.0"))
    assert resolve(db, spec(version=TNX_2_31)) == (TNX_2_31, TORCH, CC_2_31, "2.33.10.0")


def test_two_workers_that_differ_in_neuronx_cc_are_ambiguous(db: Database) -> None:
    register(db, worker(TNX_2_31, CC_2_31, "2.33.10.0"), worker(TNX_2_31, CC_2_30, "2.33.10.0"))
    with pytest.raises(errors.ToolchainAmbiguous, match="compiler.neuronx_cc_version") as caught:
        resolve(db, spec())
    assert {c["packages"] for c in caught.value.extra["candidates"]} == {
        f"neuronx-cc=={CC_2_31}, torch=={TORCH}", f"neuronx-cc=={CC_2_30}, torch=={TORCH}"}


def test_fully_named_needs_no_worker(db: Database) -> None:
    register(db)
    named = spec(version=TNX_2_31, torch_version="2.9.0", neuronx_cc_version="2.26.6360.0", runtime="2.33.10.0")
    assert resolve(db, named) == (TNX_2_31, "2.9.0", "2.26.6360.0", "2.33.10.0")


def test_no_worker_is_unavailable(db: Database) -> None:
    register(db)
    with pytest.raises(errors.ToolchainUnavailable, match="no registered worker offers torch-neuronx"):
        resolve(db, spec())


@pytest.mark.parametrize(("named", "words"), [
    ({"neuronx_cc_version": "2.25.3371.0"}, "neuronx-cc 2.25.3371.0 ships in SDK 2.30.0"),
    ({"version": TNX_2_30}, f"torch-neuronx {TNX_2_30} ships in SDK 2.30.0"),
    ({"torch_version": "2.8.0"}, f"torch-neuronx {TNX_2_31} is built for torch 2.9.0, not 2.8.0"),
])
def test_pairs_that_never_shipped_together_are_refused(db: Database, named: dict[str, str], words: str) -> None:
    register(db)
    full = {"version": TNX_2_31, "torch_version": "2.9.0", "neuronx_cc_version": "2.26.6360.0",
            "runtime": "2.33.10.0", **named}
    with pytest.raises(errors.ToolchainMismatch) as caught:
        resolve(db, spec(**full))
    assert words in caught.value.detail
    allowed = CompileSpec.model_validate({**spec(**full).model_dump(mode="json"), "allow_toolchain_mismatch": True})
    assert resolve(db, allowed)[0] == full["version"]


def test_a_named_torch_neuronx_and_runtime_of_two_releases_are_refused_before_any_worker_is_asked(
        db: Database) -> None:
    register(db, worker(TNX_2_31, CC_2_31, "2.33.10.0"))  # neuronx-cc and torch left out: a worker has them
    with pytest.raises(errors.ToolchainMismatch, match=f"torch-neuronx {TNX_2_31} ships in SDK 2.31"):
        resolve(db, spec(version=TNX_2_31, runtime="2.34.10.0"))


def test_registered_toolchains_carry_the_packages(db: Database) -> None:
    register(db, worker(TNX_2_31, CC_2_31, "2.33.10.0"))
    with db.session() as session:
        (found,) = registered_toolchains(session, TTL_S)
    assert found.package("neuronx-cc") == CC_2_31 and found.package("torch") == TORCH
    assert found.describe()["packages"] == f"neuronx-cc=={CC_2_31}, torch=={TORCH}"
