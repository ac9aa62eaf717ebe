"""The torch_neuronx test double keeps the documented `torch_neuronx.trace` contract and fails the
ways the real package does; it is reachable only where a test puts it."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

from neffcache import neff
from tests.support.torch_neuronx import TORCH_NEURONX_DOUBLE, NonzeroModel, TinyModel, double_env, token_ids


@pytest.fixture
def torch_neuronx(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[ModuleType]:
    for name, value in double_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NEURONX_CC_DOUBLE_RECORD", str(tmp_path / "argv.jsonl"))
    monkeypatch.syspath_prepend(str(TORCH_NEURONX_DOUBLE))
    module = importlib.import_module("torch_neuronx")
    yield module
    sys.modules.pop("torch_neuronx", None)


def compile_argv(tmp_path: Path) -> list[str]:
    return [a for a in map(json.loads, (tmp_path / "argv.jsonl").read_text().splitlines()) if a[0] == "compile"][-1]


def test_trace_returns_a_module_with_its_neff_that_runs_like_the_model(torch_neuronx: ModuleType,
                                                                      tmp_path: Path) -> None:
    model = TinyModel(seed=5).eval()
    traced = torch_neuronx.trace(model, token_ids(), compiler_workdir=tmp_path / "w",
                                 compiler_args="--optlevel 3 --target trn2")
    assert isinstance(traced, torch.jit.ScriptModule)
    assert torch.equal(traced(token_ids()), model(token_ids()))
    data = traced.neff.numpy().tobytes()
    assert data == (tmp_path / "w" / "graph.neff").read_bytes()
    header = neff.validate(__import__("io").BytesIO(data), len(data))
    assert header.neff_version_major == 2
    # A str of compiler_args is split; a --target among them is the target.
    argv = compile_argv(tmp_path)
    assert argv[argv.index("--target") + 1] == "trn2" and argv.count("--target") == 1
    assert argv[-4:-2] == ["--optlevel", "3"]


def test_without_a_target_or_a_work_dir_it_uses_its_defaults(torch_neuronx: ModuleType, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    torch_neuronx.trace(TinyModel().eval(), (token_ids(),))
    argv = compile_argv(tmp_path)
    assert argv[argv.index("--target") + 1] == "trn1"
    assert Path(argv[1]).name == "model.hlo_module.pb" and Path(argv[1]).parent.parent == tmp_path / "tmp"


def test_options_are_keyword_only(torch_neuronx: ModuleType) -> None:
    with pytest.raises(TypeError, match="keyword-only"):
        torch_neuronx.trace(TinyModel(), token_ids(), "/tmp/workdir")


def test_a_compiler_error_raises_as_the_real_package_does(torch_neuronx: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"^neuronx-cc failed with 70$"):
        torch_neuronx.trace(TinyModel(markers=("double_fail",)).eval(), token_ids(), compiler_workdir=tmp_path)
    with pytest.raises(RuntimeError, match=r"^neuronx-cc failed with -9$"):
        torch_neuronx.trace(TinyModel(markers=("double_kill",)).eval(), token_ids(), compiler_workdir=tmp_path)


def test_an_unsupported_operator_raises_before_the_compiler_runs(torch_neuronx: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="aten::nonzero is not supported"):
        torch_neuronx.trace(NonzeroModel(), torch.rand(4, 4), compiler_workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_a_trace_kill_is_a_sigkill_of_the_tracing_process(tmp_path: Path) -> None:
    code = ("import torch_neuronx; from tests.support.torch_neuronx import TinyModel, token_ids; "
            "torch_neuronx.trace(TinyModel(markers=('double_trace_kill',)), token_ids())")
    env = double_env()
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(Path(__file__).parents[4])])
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]


def test_the_double_is_out_of_reach_unless_a_test_puts_it_there() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "import torch_neuronx"], env=env, capture_output=True, timeout=120)
    assert proc.returncode != 0 and b"No module named 'torch_neuronx'" in proc.stderr
