"""The torch-neuronx backend against the torch_neuronx and neuronx-cc test doubles (no service,
no queue): detection, the traced module and its NEFFs, and every way a trace ends."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from neffcache import neff
from neffcache.lifecycle import FailureClass
from neffcache.settings import Settings
from neffcache.workers.backends.base import BackendUnavailable, CompileOutcome
from neffcache.workers.backends.registry import load_backend
from neffcache.workers.backends.torch_neuronx import TorchNeuronxBackend
from neffcache.workers.backends.torch_neuronx_child import neff_names
from tests.support.torch_neuronx import (
    DOUBLE_TORCH_NEURONX_VERSION,
    NEURON_RUNTIME,
    NEURONX_CC_VERSION,
    TORCH_NEURONX_DOUBLE,
    TORCH_VERSION,
    NonzeroModel,
    TinyModel,
    double_env,
    export_bytes,
    manifest,
    token_ids,
    torchscript_bytes,
)


def never() -> bool:
    return False


@pytest.fixture
def record(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Both doubles in reach of this process and its children; the neuronx-cc argv record."""
    for name, value in double_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(TORCH_NEURONX_DOUBLE))  # importlib.metadata finds the dist-info
    monkeypatch.delenv("NEURONX_CC_DOUBLE_VERSION", raising=False)
    path = tmp_path / "neuronx-cc-argv.jsonl"
    monkeypatch.setenv("NEURONX_CC_DOUBLE_RECORD", str(path))
    return path


@pytest.fixture
def backend(record: Path) -> TorchNeuronxBackend:
    return TorchNeuronxBackend(Settings(worker_backend="torch-neuronx", worker_runtime_version=NEURON_RUNTIME))


def compile_model(backend: TorchNeuronxBackend, tmp_path: Path, data: bytes, name: str = "m",
                  timeout_s: float = 120, should_cancel=never, **manifest_args) -> CompileOutcome:
    model = tmp_path / f"{name}.model"
    model.write_bytes(data)
    return backend.compile(manifest(**manifest_args), model, tmp_path / f"{name}-work", timeout_s, should_cancel)


def test_detect_reports_what_is_installed(backend: TorchNeuronxBackend) -> None:
    toolchain = load_backend(Settings(worker_backend="torch_neuronx", worker_runtime_version=NEURON_RUNTIME)).detect()
    assert toolchain == backend.detect()
    assert (toolchain.compiler_name, toolchain.compiler_version) == ("torch-neuronx", DOUBLE_TORCH_NEURONX_VERSION)
    assert (toolchain.runtime_name, toolchain.runtime_version) == ("neuron-runtime", NEURON_RUNTIME)
    assert dict(toolchain.packages) == {"torch": TORCH_VERSION, "neuronx-cc": NEURONX_CC_VERSION}
    assert toolchain.as_dict()["packages"] == {"torch": TORCH_VERSION, "neuronx-cc": NEURONX_CC_VERSION}
    assert type(toolchain).from_dict(toolchain.as_dict()) == toolchain


def test_detect_without_torch_neuronx_says_how_to_get_it(record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p != str(TORCH_NEURONX_DOUBLE)])
    backend = TorchNeuronxBackend(Settings(worker_backend="torch-neuronx", worker_runtime_version=NEURON_RUNTIME))
    with pytest.raises(BackendUnavailable, match="torch-neuronx is not installed.*Neuron repository"):
        backend.detect()


def test_export_model_traces_to_a_module_that_loads_and_gives_the_eager_result(
    backend: TorchNeuronxBackend, record: Path, tmp_path: Path
) -> None:
    model = TinyModel(seed=1)
    outcome = compile_model(backend, tmp_path, export_bytes(model, token_ids()),
                            flags=["--optlevel=2", "--auto-cast=none"], target="trn2")
    assert outcome.ok, outcome.message + outcome.log_path.read_text()[-2000:]
    assert set(outcome.files) == {"model.pt", "graph.neff"}
    loaded = torch.jit.load(str(outcome.files["model.pt"]))
    assert torch.equal(loaded(token_ids()), model(token_ids()))
    with open(outcome.files["graph.neff"], "rb") as f:
        header = neff.validate(f, outcome.files["graph.neff"].stat().st_size)
    assert header.neff_build_version == NEURONX_CC_VERSION
    argv = [json.loads(line) for line in record.read_text().splitlines()][-1]
    assert argv[:2] == ["compile", str(tmp_path / "m-work" / "neuronx-cc" / "model.hlo_module.pb")]
    assert argv[-4:] == ["--optlevel=2", "--auto-cast=none", "--target", "trn2"]
    log = outcome.log_path.read_text()
    assert "Compiler status PASS" in log and "wrote model.pt" in log


def test_torchscript_model_traces_too(backend: TorchNeuronxBackend, tmp_path: Path) -> None:
    model = TinyModel(seed=2)
    outcome = compile_model(backend, tmp_path, torchscript_bytes(model, token_ids()), fmt="torchscript")
    assert outcome.ok, outcome.message
    assert torch.equal(torch.jit.load(str(outcome.files["model.pt"]))(token_ids()), model(token_ids()))


def test_inline_weights_to_neff_changes_the_neff(backend: TorchNeuronxBackend, tmp_path: Path) -> None:
    def neff_of(seed: int, inline: bool, name: str) -> bytes:
        outcome = compile_model(backend, tmp_path, export_bytes(TinyModel(seed=seed), token_ids()), name=name,
                                inline=inline)
        assert outcome.ok, outcome.message
        return outcome.files["graph.neff"].read_bytes()

    inlined, other_weights = neff_of(3, True, "a"), neff_of(4, True, "b")
    apart, apart_other_weights = neff_of(3, False, "c"), neff_of(4, False, "d")
    assert inlined != other_weights  # the weights are in the NEFF
    assert apart == apart_other_weights  # they are not
    assert inlined != apart


@pytest.mark.parametrize(
    ("markers", "failure", "words"),
    [
        (("double_fail",), FailureClass.COMPILE_ERROR, "neuronx-cc failed with 70"),
        (("double_kill",), FailureClass.OOM, "SIGKILL"),
        (("double_trace_kill",), FailureClass.OOM, "SIGKILL"),
    ],
)
def test_compiler_failures_are_classed(backend: TorchNeuronxBackend, tmp_path: Path, markers: tuple[str, ...],
                                       failure: FailureClass, words: str) -> None:
    outcome = compile_model(backend, tmp_path, export_bytes(TinyModel(markers=markers), token_ids()))
    assert not outcome.ok and outcome.files == {}
    assert outcome.failure_class == failure and words in outcome.message, outcome.message


def test_unsupported_operator_is_a_compile_error(backend: TorchNeuronxBackend, record: Path, tmp_path: Path) -> None:
    x = torch.rand(4, 4)
    outcome = compile_model(backend, tmp_path, torchscript_bytes(NonzeroModel(), x), fmt="torchscript",
                            shape=[4, 4], dtype="float32")
    assert outcome.failure_class == FailureClass.COMPILE_ERROR
    assert "aten::nonzero is not supported" in outcome.message
    # Refused before the compiler ran (the record holds only detect's `--version`).
    assert [json.loads(line)[0] for line in record.read_text().splitlines()] == ["--version"]


@pytest.mark.parametrize("fmt", ["torch-export", "torchscript"])
def test_inputs_that_do_not_fit_are_invalid_input(backend: TorchNeuronxBackend, tmp_path: Path, fmt: str) -> None:
    save = export_bytes if fmt == "torch-export" else torchscript_bytes
    # Floats into an embedding: a dtype the exported program does not take, and that the
    # TorchScript module cannot run.
    outcome = compile_model(backend, tmp_path, save(TinyModel(), token_ids()), fmt=fmt, dtype="float32")
    assert outcome.failure_class == FailureClass.INVALID_INPUT, outcome.message
    assert "input" in outcome.message


def test_a_hang_times_out_and_a_cancel_ends_it(backend: TorchNeuronxBackend, tmp_path: Path) -> None:
    hanging = export_bytes(TinyModel(markers=("double_hang",)), token_ids())
    timed_out = compile_model(backend, tmp_path, hanging, name="t", timeout_s=8)
    assert timed_out.failure_class == FailureClass.TIMEOUT
    cancel = threading.Event()
    threading.Timer(6.0, cancel.set).start()
    cancelled = compile_model(backend, tmp_path, hanging, name="c", should_cancel=cancel.is_set)
    assert cancelled.failure_class == FailureClass.CANCELLED


def test_impossible_manifests_fail_before_starting(backend: TorchNeuronxBackend, tmp_path: Path) -> None:
    for i, (args, words) in enumerate([({"target": "cpu"}, "target 'cpu'"), ({"fmt": "hlo"}, "not 'hlo'")]):
        outcome = compile_model(backend, tmp_path, b"not read", name=f"x{i}", **args)
        assert outcome.failure_class == FailureClass.COMPILE_ERROR and words in outcome.message
        assert outcome.seconds < 1


def test_a_job_for_other_torch_or_neuronx_cc_versions_is_refused(backend: TorchNeuronxBackend, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.write_bytes(b"not read")
    for field, package in (("torch_version", "torch"), ("neuronx_cc_version", "neuronx-cc")):
        wanted = manifest()
        wanted["compiler"][field] = "9.9.9"
        outcome = backend.compile(wanted, model, tmp_path / field, 60, never)
        assert outcome.failure_class == FailureClass.INVALID_INPUT
        assert f"the job needs {package}==9.9.9" in outcome.message
    release_only = manifest()
    release_only["compiler"]["neuronx_cc_version"] = NEURONX_CC_VERSION.split("+")[0]
    assert backend.refusal(release_only) is None


def test_neff_names_keep_every_neff_apart(tmp_path: Path) -> None:
    for relative in ("graph.neff", "sg01/graph.neff", "sg01/notes.txt"):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    assert sorted(neff_names(tmp_path)) == ["graph.neff", "sg01--graph.neff"]


def test_worker_environment_never_reaches_the_key_behind_its_back(backend: TorchNeuronxBackend, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # NEURON_CC_FLAGS would add compiler options the key does not hold: the child never sees it.
    monkeypatch.setenv("NEURON_CC_FLAGS", "--optlevel=1")
    seen = tmp_path / "env.json"
    model = TinyModel(markers=())
    monkeypatch.setenv("TORCH_NEURONX_DOUBLE_ENV_DUMP", str(seen))
    outcome = compile_model(backend, tmp_path, export_bytes(model, token_ids()))
    assert outcome.ok, outcome.message
    assert "NEURON_CC_FLAGS" not in json.loads(seen.read_text())
    assert os.environ["NEURON_CC_FLAGS"] == "--optlevel=1"  # the worker's own is left alone
