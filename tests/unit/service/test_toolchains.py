"""service/toolchains.py in process: a spec's compiler and runtime versions resolved from the SDK
release table and the toolchains of registered workers; ambiguity and mismatch refusals.

The database is SQLite made by the Alembic migrations; the SDK table is a small one written here
(shaped like neffcache/data/sdk_releases.json), so the cases do not move when the real table is
refreshed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete

from neffcache import errors
from neffcache.db.models import Worker, utcnow
from neffcache.db.session import Database
from neffcache.sdk import SdkTable
from neffcache.service.toolchains import RegisteredToolchain, registered_toolchains, resolve_spec
from neffcache.spec import CompileSpec
from neffcache.toolchain import COMPILER_PACKAGE, RUNTIME_PACKAGE
from tests.support.in_process import migrated_sqlite

TTL_S = 60.0
NEURON_2_32 = "2.27.5334.0+2d6a2ba2b"  # neuronx-cc of SDK 2.32.0, as the binary reports it
NEURON_2_31 = "2.26.6360.0+a1b2c3d4e"  # neuronx-cc of SDK 2.31.0
TORCH = "2.13.0+cpu"


def _release(sdk: str, compilers: list[str], runtimes: list[str]) -> dict[str, Any]:
    return {"sdk": sdk, "instances": ["trn1", "trn2"],
            "packages": {COMPILER_PACKAGE: compilers, RUNTIME_PACKAGE: runtimes}}


SDK = SdkTable.from_data({"releases": [
    _release("2.32.0", ["2.27.5334.0"], ["2.34.10.0"]),
    _release("2.31.0", ["2.26.6360.0"], ["2.33.10.0"]),
    # One runtime, two compilers (two SDK releases ship the same runtime).
    _release("2.29.1", ["2.24.8799.0"], ["2.31.24.0"]),
    _release("2.29.0", ["2.24.5133.0"], ["2.31.24.0"]),
    # One compiler that shipped with two runtimes.
    _release("2.20.0", ["2.15.1.0"], ["2.20.1.0", "2.20.2.0"]),
]})


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    database = Database(migrated_sqlite(tmp_path_factory.mktemp("toolchains")))
    yield database
    database.dispose()


def _worker(compiler: str, version: str, runtime: str, targets: tuple[str, ...] = ("trn1", "trn2"),
            state: str = "idle", silent_s: float = 0.0) -> dict[str, Any]:
    return {"compiler": compiler, "version": version, "runtime": runtime, "targets": targets,
            "state": state, "silent_s": silent_s}


def neuron(version: str, runtime: str, **kw: Any) -> dict[str, Any]:
    return _worker("neuronx-cc", version, runtime, **kw)


def inductor(version: str = TORCH, **kw: Any) -> dict[str, Any]:
    return _worker("inductor", version, version, **{"targets": ("cpu",), **kw})


@pytest.fixture
def workers(db: Database):
    """workers(*specs): the registered workers are exactly these (the table is emptied first)."""

    def register(*specs: dict[str, Any]) -> None:
        with db.session() as session:
            session.execute(delete(Worker))
            for i, w in enumerate(specs):
                runtime_name = "neuron-runtime" if w["compiler"] == "neuronx-cc" else "torch"
                session.add(Worker(
                    id=f"worker-{i}", host="host", pid=1000 + i,
                    compiler_name=w["compiler"], compiler_version=w["version"],
                    runtime_name=runtime_name, runtime_version=w["runtime"],
                    toolchain={"targets": list(w["targets"])}, queues=[], state=w["state"],
                    last_heartbeat=utcnow() - timedelta(seconds=w["silent_s"]),
                ))

    register()
    return register


def _spec(compiler: str = "neuronx-cc", compiler_version: str | None = None,
          runtime_version: str | None = None, target: str | None = None, flags: tuple[str, ...] = (),
          **extra: Any) -> CompileSpec:
    neuron_spec = compiler == "neuronx-cc"
    raw: dict[str, Any] = {
        "model": {"format": "hlo" if neuron_spec else "torch-export", "digest": "sha256:" + "ab" * 32},
        "inputs": [{"name": "x", "shape": [1, 128], "dtype": "float32"}],
        "target": target or ("trn2" if neuron_spec else "cpu"),
        "compiler": {"name": compiler, "flags": list(flags),
                     **({"version": compiler_version} if compiler_version else {})},
        "runtime": {"name": "neuron-runtime" if neuron_spec else "torch",
                    **({"version": runtime_version} if runtime_version else {})},
        **extra,
    }
    return CompileSpec.model_validate(raw)


def _toolchains(db: Database) -> Callable[[], list[RegisteredToolchain]]:
    def load() -> list[RegisteredToolchain]:
        with db.session() as session:
            return registered_toolchains(session, TTL_S)

    return load


def _resolve(db: Database, spec: CompileSpec) -> tuple[str | None, str | None]:
    resolved = resolve_spec(_toolchains(db), spec, SDK)
    assert resolved.runtime is not None
    return resolved.compiler.version, resolved.runtime.version


# (id, registered workers, spec, the resolved (compiler, runtime) versions)
RESOLVED = [
    ("both-given-and-paired", [], _spec(compiler_version=NEURON_2_32, runtime_version="2.34.10.0"),
     (NEURON_2_32, "2.34.10.0")),
    ("both-given-unknown-to-the-table-are-not-judged", [], _spec(compiler_version="9.9.9.9", runtime_version="9.0.0.0"),
     ("9.9.9.9", "9.0.0.0")),
    ("mismatch-allowed-by-the-spec", [],
     _spec(compiler_version=NEURON_2_32, runtime_version="2.33.10.0", allow_toolchain_mismatch=True),
     (NEURON_2_32, "2.33.10.0")),
    ("runtime-only-gets-the-compiler-of-its-release",
     [neuron(NEURON_2_32, "2.34.10.0"), neuron(NEURON_2_31, "2.33.10.0")],
     _spec(runtime_version="2.33.10.0"), (NEURON_2_31, "2.33.10.0")),
    ("runtime-only-a-worker-of-that-release-on-another-runtime-still-fits",
     [neuron(NEURON_2_32, "2.33.10.0")],
     _spec(runtime_version="2.34.10.0"), (NEURON_2_32, "2.34.10.0")),
    ("runtime-unknown-to-the-table-picks-a-worker-on-that-runtime",
     [neuron(NEURON_2_32, "2.34.10.0"), neuron("3.0.0.0+new", "3.1.0.0")],
     _spec(runtime_version="3.1.0.0"), ("3.0.0.0+new", "3.1.0.0")),
    ("compiler-release-only-gets-its-runtime-without-any-worker", [],
     _spec(compiler_version="2.27.5334.0"), ("2.27.5334.0", "2.34.10.0")),
    ("compiler-unknown-to-the-table-gets-the-runtime-of-its-worker",
     [neuron("3.0.0.0+new", "3.1.0.0")],
     _spec(compiler_version="3.0.0.0+new"), ("3.0.0.0+new", "3.1.0.0")),
    ("neither-one-worker", [neuron(NEURON_2_32, "2.34.10.0")], _spec(), (NEURON_2_32, "2.34.10.0")),
    ("neither-a-silent-and-a-stopped-worker-do-not-count",
     [neuron(NEURON_2_32, "2.34.10.0"), neuron(NEURON_2_31, "2.33.10.0", silent_s=TTL_S * 2),
      neuron("2.24.8799.0+x", "2.31.24.0", state="stopped")],
     _spec(), (NEURON_2_32, "2.34.10.0")),
    ("neither-a-worker-for-another-target-does-not-count",
     [neuron(NEURON_2_32, "2.34.10.0", targets=("trn2",)), neuron(NEURON_2_31, "2.33.10.0", targets=("trn1",))],
     _spec(target="trn2"), (NEURON_2_32, "2.34.10.0")),
    ("neither-two-workers-of-the-same-toolchain", [neuron(NEURON_2_32, "2.34.10.0"), neuron(NEURON_2_32, "2.34.10.0")],
     _spec(), (NEURON_2_32, "2.34.10.0")),
    ("inductor-compiler-only-names-the-runtime", [], _spec("inductor", compiler_version=TORCH), (TORCH, TORCH)),
    ("inductor-runtime-only-names-the-compiler", [], _spec("inductor", runtime_version=TORCH), (TORCH, TORCH)),
    ("inductor-neither-from-the-one-worker", [inductor(), neuron(NEURON_2_32, "2.34.10.0")],
     _spec("inductor"), (TORCH, TORCH)),
]


@pytest.mark.parametrize(("registered", "spec", "expected"), [c[1:] for c in RESOLVED], ids=[c[0] for c in RESOLVED])
def test_resolves(db: Database, workers, registered: list[dict[str, Any]], spec: CompileSpec,
                  expected: tuple[str, str]) -> None:
    workers(*registered)
    assert _resolve(db, spec) == expected


# (id, registered workers, spec, the error, words its detail holds)
REFUSED = [
    ("mismatched-pair-names-both-releases", [], _spec(compiler_version=NEURON_2_32, runtime_version="2.33.10.0"),
     errors.ToolchainMismatch, ["spec.runtime.version", "SDK 2.32.0", "SDK 2.31.0", "allow_toolchain_mismatch"]),
    ("runtime-only-no-worker-of-its-release", [neuron(NEURON_2_31, "2.33.10.0")], _spec(runtime_version="2.34.10.0"),
     errors.ToolchainUnavailable, ["spec.compiler.version", "no registered worker offers neuronx-cc for target trn2"]),
    ("neither-and-no-worker", [inductor()], _spec(),
     errors.ToolchainUnavailable, ["spec.compiler.version", "name the version explicitly"]),
    ("neither-and-two-toolchains", [neuron(NEURON_2_32, "2.34.10.0"), neuron(NEURON_2_31, "2.33.10.0")], _spec(),
     errors.ToolchainAmbiguous, ["spec.compiler.version", "2 registered toolchains fit", NEURON_2_31, NEURON_2_32]),
    ("runtime-only-two-releases-ship-it", [neuron("2.24.8799.0+a", "2.31.24.0"), neuron("2.24.5133.0+b", "2.31.24.0")],
     _spec(runtime_version="2.31.24.0"),
     errors.ToolchainAmbiguous, ["spec.compiler.version", "2.24.8799.0+a", "2.24.5133.0+b"]),
    ("compiler-only-shipped-with-two-runtimes", [], _spec(compiler_version="2.15.1.0"),
     errors.ToolchainAmbiguous, ["spec.runtime.version", "2.20.1.0", "2.20.2.0"]),
    ("compiler-unknown-to-the-table-and-to-every-worker", [neuron(NEURON_2_32, "2.34.10.0")],
     _spec(compiler_version="3.0.0.0"),
     errors.ToolchainUnavailable, ["spec.runtime.version", "neuronx-cc 3.0.0.0 is in no SDK release", "sdk refresh"]),
    ("inductor-compiler-and-runtime-differ", [], _spec("inductor", compiler_version=TORCH, runtime_version="2.12.0"),
     errors.ToolchainMismatch, ["spec.runtime.version", "only in the torch that built them", TORCH, "2.12.0"]),
    ("inductor-two-torch-workers", [inductor(), inductor("2.12.0+cpu")], _spec("inductor"),
     errors.ToolchainAmbiguous, ["spec.compiler.version", "2.12.0+cpu", TORCH]),
    ("inductor-worker-for-cpu-only", [inductor()], _spec("inductor", target="cuda", flags=("cuda.arch=sm_90",)),
     errors.ToolchainUnavailable, ["no registered worker offers inductor for target cuda"]),
]


@pytest.mark.parametrize(("registered", "spec", "error", "words"), [c[1:] for c in REFUSED],
                         ids=[c[0] for c in REFUSED])
def test_refuses(db: Database, workers, registered: list[dict[str, Any]], spec: CompileSpec,
                 error: type[errors.NeffcacheError], words: list[str]) -> None:
    workers(*registered)
    with pytest.raises(error) as caught:
        _resolve(db, spec)
    assert type(caught.value) is error
    assert caught.value.http_status == 422
    for word in words:
        assert word in caught.value.detail, (word, caught.value.detail)


def test_a_mismatch_lists_the_releases_of_each_side(db: Database, workers) -> None:
    workers()
    with pytest.raises(errors.ToolchainMismatch) as caught:
        _resolve(db, _spec(compiler_version=NEURON_2_32, runtime_version="2.31.24.0"))
    assert caught.value.extra == {"compiler_releases": ["2.32.0"], "runtime_releases": ["2.29.1", "2.29.0"]}


def test_ambiguity_lists_the_candidates(db: Database, workers) -> None:
    workers(neuron(NEURON_2_32, "2.34.10.0"), neuron(NEURON_2_31, "2.33.10.0"), inductor())
    with pytest.raises(errors.ToolchainAmbiguous) as caught:
        _resolve(db, _spec())
    assert caught.value.extra["candidates"] == [
        {"compiler": f"neuronx-cc=={NEURON_2_31}", "runtime": "neuron-runtime==2.33.10.0"},
        {"compiler": f"neuronx-cc=={NEURON_2_32}", "runtime": "neuron-runtime==2.34.10.0"},
    ]


def test_an_unavailable_toolchain_has_no_candidates(db: Database, workers) -> None:
    workers()
    with pytest.raises(errors.ToolchainUnavailable) as caught:
        _resolve(db, _spec())
    assert caught.value.extra == {"candidates": []}


def test_resolving_keeps_the_rest_of_the_spec(db: Database, workers) -> None:
    workers(neuron(NEURON_2_32, "2.34.10.0"))
    spec = _spec(namespace="team-a", flags=("-O2",))
    resolved = resolve_spec(_toolchains(db), spec, SDK)
    assert resolved.compiler.version == NEURON_2_32 and resolved.compiler.flags == ["-O2"]
    assert resolved.namespace == "team-a" and resolved.target == spec.target and resolved.model == spec.model
    assert spec.compiler.version is None  # the caller's spec is not changed


def test_registered_toolchains_are_the_live_ones_once_each(db: Database, workers) -> None:
    workers(neuron(NEURON_2_32, "2.34.10.0"), neuron(NEURON_2_32, "2.34.10.0"), inductor(),
            neuron(NEURON_2_31, "2.33.10.0", silent_s=TTL_S * 2), inductor("2.12.0", state="stopped"))
    with db.session() as session:
        found = registered_toolchains(session, TTL_S)
    assert found == [
        RegisteredToolchain("inductor", TORCH, "torch", TORCH, ("cpu",)),
        RegisteredToolchain("neuronx-cc", NEURON_2_32, "neuron-runtime", "2.34.10.0", ("trn1", "trn2")),
    ]
