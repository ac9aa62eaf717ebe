"""The inductor backend for real: one AOTInductor compile of a tiny MLP on this CPU (~30 s)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from neffcache.settings import Settings
from neffcache.workers.backends.base import CompileOutcome
from neffcache.workers.backends.inductor import (
    InductorBackend,
    child_env,
    host_x86_levels,
    x86_levels,
)
from tests.support.models import save_tiny_exported_model

TORCH_VERSION = importlib.metadata.version("torch")
# Files inductor, g++ and triton leave behind; anything else new in /tmp is someone else's.
COMPILER_LEFTOVERS = (".cpp", ".h", ".hpp", ".so", ".o", ".gch", ".pch", ".lock", ".json", ".py", ".pt2", ".bin")


def manifest(
    shape: list[int], isa: str | None = "x86-64-v3", target: str = "cpu", flags: list[str] | None = None,
) -> dict:
    return {
        "key_version": 1,
        "namespace": "default",
        "model": {"format": "torch-export", "digest": "sha256:" + "0" * 64},
        "inputs": [{"name": "x", "shape": shape, "dtype": "float32"}],
        "target": target,
        "isa": isa,
        "compiler": {"name": "inductor", "version": TORCH_VERSION, "flags": list(flags or [])},
        "runtime": {"name": "torch", "version": TORCH_VERSION},
        "allow_toolchain_mismatch": False,
    }


def never() -> bool:
    return False


def files_under(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        found.update(os.path.join(dirpath, n) for n in filenames + dirnames)
    return found


def new_compiler_leftovers(before: set[str], root: Path) -> list[str]:
    """New entries directly under root that are, or hold, compiler leftovers."""
    leftovers = []
    for name in set(os.listdir(root)) - before:
        path = root / name
        if name.startswith("pytest-of-"):
            continue  # pytest's own tmp_path tree, the work dir included
        candidates = [str(path)] if path.is_file() else files_under(path) if path.is_dir() else set()
        if name.startswith(("torchinductor", "triton", "aotinductor")) or any(
            c.endswith(COMPILER_LEFTOVERS) for c in candidates
        ):
            leftovers.append(str(path))
    return sorted(leftovers)


@dataclass
class Compiled:
    model: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    work: Path
    outcome: CompileOutcome
    sentinel: Path
    leftovers_in_real_tmp: list[str]
    new_under_home: list[str]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compiled]:
    """The one real compile of this module.

    The worker's own environment points TMPDIR, HOME, XDG_CACHE_HOME and inductor's/triton's
    cache variables at a sentinel dir: the backend must override every one of them for the child,
    so anything that lands in the sentinel leaked. The real temp dir and home caches are listed
    before and after, for anything written to a hard-coded path.
    """
    root = tmp_path_factory.mktemp("inductor")
    model_path = root / "input" / "model"  # no .pt2 suffix: the worker stores blobs like this
    model, inputs = save_tiny_exported_model(model_path, batch=8, features=64, seed=3)
    work = root / "work"
    sentinel = root / "sentinel"
    for sub in ("tmp", "home", "cache", "inductor", "triton"):
        (sentinel / sub).mkdir(parents=True)
    real_tmp = Path(tempfile.gettempdir())
    home = Path.home()
    home_caches = [home / ".cache", home / ".triton", home / ".nv"]
    tmp_before = set(os.listdir(real_tmp))
    home_before = set().union(*(files_under(p) for p in home_caches))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(sentinel / "tmp"))
        mp.setenv("HOME", str(sentinel / "home"))
        mp.setenv("XDG_CACHE_HOME", str(sentinel / "cache"))
        mp.setenv("TORCHINDUCTOR_CACHE_DIR", str(sentinel / "inductor"))
        mp.setenv("TRITON_CACHE_DIR", str(sentinel / "triton"))
        mp.setenv("TORCHINDUCTOR_CPP_MARCH", "native")  # must not reach the child either
        backend = InductorBackend(Settings(worker_backend="inductor", worker_cuda=False))
        outcome = backend.compile(manifest([8, 64]), model_path, work, 600, never)

    yield Compiled(
        model=model,
        inputs=inputs,
        work=work.resolve(),
        outcome=outcome,
        sentinel=sentinel,
        leftovers_in_real_tmp=new_compiler_leftovers(tmp_before, real_tmp),
        new_under_home=sorted(set().union(*(files_under(p) for p in home_caches)) - home_before),
    )


def test_compile_produces_a_package_that_matches_eager(
    compiled: Compiled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome = compiled.outcome
    assert outcome.ok, f"{outcome.message}\n{outcome.log_path.read_text()[-4000:]}"
    package = compiled.work / "out" / "model.pt2"
    assert outcome.files == {"model.pt2": package}
    assert package.stat().st_size > 0
    assert outcome.log_path == compiled.work / "compile.log"
    log = outcome.log_path.read_text()
    assert "'cpp.march': 'x86-64-v3'" in log and "'aot_inductor.precompile_headers': False" in log
    print(f"inductor compile took {outcome.seconds:.1f} s")

    # Loading probes the CPU's vector ISA by compiling test programs with g++ into inductor's
    # cache dir (/tmp/torchinductor_<user> by default): keep that in tmp_path too.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "load-cache"))
    loaded = torch._inductor.aoti_load_package(str(package))
    with torch.no_grad():
        expected = compiled.model(*compiled.inputs)
        torch.testing.assert_close(loaded(*compiled.inputs), expected)
        other = torch.randn(8, 64, generator=torch.Generator().manual_seed(99))
        torch.testing.assert_close(loaded(other), compiled.model(other))


def test_compile_writes_nothing_outside_the_work_dir(compiled: Compiled) -> None:
    assert compiled.outcome.ok, compiled.outcome.message
    assert sorted(files_under(compiled.sentinel)) == sorted(
        str(compiled.sentinel / sub) for sub in ("tmp", "home", "cache", "inductor", "triton")
    ), "the child used a location from the worker's environment"
    assert compiled.leftovers_in_real_tmp == []
    assert compiled.new_under_home == []
    # What it did write is in the work dir: inductor's cache (with AVX2 kernels: ATEN_CPU_CAPABILITY).
    cache = compiled.work / "inductor-cache"
    kernels = [p for p in cache.rglob("*.cpp") if "CPU_CAPABILITY_AVX2" in p.read_text(errors="replace")]
    assert kernels, "no AVX2 kernel source in the work dir's inductor cache"
    assert not any(cache.rglob("*.gch")), "precompiled headers were built"


def test_input_shape_mismatch_is_invalid_input_naming_the_input(tmp_path: Path) -> None:
    model_path = tmp_path / "model"
    save_tiny_exported_model(model_path, batch=8, features=64)
    backend = InductorBackend(Settings(worker_cuda=False))
    outcome = backend.compile(manifest([4, 64]), model_path, tmp_path / "work", 120, never)
    assert outcome.failure_class == "invalid_input"
    assert "input 'x' (#0): shape [4, 64] in the manifest, [8, 64] in the exported program" in outcome.message
    assert outcome.message.startswith("inductor exited with 3")
    assert outcome.files == {}


def test_inputs_are_checked_against_the_programs_input_specs() -> None:
    """In the child, before compiling: static dims must be equal, dynamic ones within their
    range (torch's own check), dtypes equal, and as many inputs as the program takes."""
    import io

    from neffcache.workers.backends.inductor_child import InputsMismatch, check_inputs

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    def saved_and_loaded(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
        buffer = io.BytesIO()
        torch.export.save(ep, buffer)
        buffer.seek(0)
        return torch.export.load(buffer)

    example = (torch.randn(8, 64),)
    static = saved_and_loaded(torch.export.export(Double(), example))
    batch = torch.export.Dim("batch", min=2, max=64)
    dynamic = saved_and_loaded(torch.export.export(Double(), example, dynamic_shapes={"x": {0: batch}}))
    cases = [
        (static, [8, 64], "float32", None),
        (static, [4, 64], "float32", "shape [4, 64] in the manifest, [8, 64] in the exported program"),
        (static, [8, 64, 1], "float32", "shape [8, 64, 1] in the manifest, [8, 64] in the exported program"),
        (static, [8, 64], "float16", "dtype float16 in the manifest, float32 in the exported program"),
        (dynamic, [4, 64], "float32", None),
        (dynamic, [64, 64], "float32", None),
        (dynamic, [100, 64], "float32", "shape[0] to be <= 64, but got 100"),
        (dynamic, [4, 32], "float32", "shape [4, 32] in the manifest, ['s"),
    ]
    for program, shape, dtype, refusal in cases:
        inputs = [{"name": "x", "shape": shape, "dtype": dtype}]
        if refusal is None:
            check_inputs(program, inputs)
        else:
            with pytest.raises(InputsMismatch, match=re.escape(refusal)):
                check_inputs(program, inputs)
    too_many = "the manifest lists 2 input(s) (x, y), the exported program takes 1 (x)"
    with pytest.raises(InputsMismatch, match=re.escape(too_many)):
        check_inputs(static, [{"name": "x", "shape": [8, 64], "dtype": "float32"}] * 1
                     + [{"name": "y", "shape": [1], "dtype": "float32"}])


def test_cancel_kills_the_child(tmp_path: Path) -> None:
    model_path = tmp_path / "model"
    save_tiny_exported_model(model_path)
    flag = threading.Event()
    threading.Timer(1.0, flag.set).start()
    outcome = InductorBackend(Settings(worker_cuda=False)).compile(
        manifest([8, 64]), model_path, tmp_path / "work", 120, flag.is_set
    )
    assert outcome.failure_class == "cancelled"
    assert outcome.seconds < 5


def test_impossible_manifests_fail_before_starting(tmp_path: Path) -> None:
    backend = InductorBackend(Settings(worker_cuda=False))
    model_path = tmp_path / "model"
    model_path.write_bytes(b"not read")
    cases = [
        (manifest([8, 64], isa="native"), "cpu isa must be one of"),
        (manifest([8, 64], target="trn1", isa=None), "not 'trn1'"),
        ({**manifest([8, 64]), "model": {"format": "hlo", "digest": "sha256:0"}}, "not 'hlo'"),
    ]
    for i, (bad, words) in enumerate(cases):
        outcome = backend.compile(bad, model_path, tmp_path / f"w{i}", 60, never)
        assert outcome.failure_class == "compile_error" and words in outcome.message
        assert words in outcome.log_path.read_text()
        assert outcome.seconds < 1


def test_detect(monkeypatch: pytest.MonkeyPatch) -> None:
    toolchain = InductorBackend(Settings(worker_cuda=False)).detect()
    assert toolchain.compiler_name == "inductor" and toolchain.runtime_name == "torch"
    assert toolchain.compiler_version == toolchain.runtime_version == TORCH_VERSION == torch.__version__
    assert toolchain.targets == ("cpu",)
    assert toolchain.isas == host_x86_levels()
    assert toolchain.isas[:1] == ("x86-64",)
    auto = InductorBackend(Settings(worker_cuda=None)).detect()
    assert ("cuda" in auto.targets) == torch.cuda.is_available()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="NEFFCACHE_WORKER_CUDA"):
            InductorBackend(Settings(worker_cuda=True)).detect()


def test_x86_levels() -> None:
    v2 = {"sse4_2", "popcnt", "ssse3"}
    v3 = v2 | {"avx2", "fma", "bmi2", "movbe"}
    v4 = v3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"}
    assert x86_levels(set()) == ("x86-64",)
    assert x86_levels(v2) == ("x86-64", "x86-64-v2")
    assert x86_levels(v3 - {"movbe"}) == ("x86-64", "x86-64-v2")
    assert x86_levels(v3) == ("x86-64", "x86-64-v2", "x86-64-v3")
    assert x86_levels(v4) == ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4")
    assert x86_levels(v4 - {"popcnt"}) == ("x86-64",)  # a level needs every level below it


def test_child_env_keeps_everything_in_the_work_dir(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "TORCHINDUCTOR_CPP_MARCH": "native"}
    env = child_env(tmp_path, manifest([8, 64], isa="x86-64-v3"), base=base)
    for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "TRITON_HOME", "TMPDIR", "XDG_CACHE_HOME",
                 "CUDA_CACHE_PATH"):
        assert Path(env[name]).is_relative_to(tmp_path), name
    assert env["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "TORCHINDUCTOR_CPP_MARCH" not in env
    assert child_env(tmp_path, manifest([1], isa="x86-64-v4"), base={})["ATEN_CPU_CAPABILITY"] == "avx512"
    assert child_env(tmp_path, manifest([1], isa="x86-64-v2"), base={})["ATEN_CPU_CAPABILITY"] == "default"
    assert "ATEN_CPU_CAPABILITY" not in child_env(
        tmp_path, manifest([1], isa="sm_90", target="cuda"), base={"ATEN_CPU_CAPABILITY": "avx2"}
    )


def test_saved_model_bytes_are_deterministic_whatever_the_file_name(tmp_path: Path) -> None:
    save_tiny_exported_model(tmp_path / "a.pt2", seed=5)
    save_tiny_exported_model(tmp_path / "b", seed=5)
    save_tiny_exported_model(tmp_path / "c.pt2", seed=6)
    digest = lambda name: hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()  # noqa: E731
    assert digest("a.pt2") == digest("b")
    assert digest("a.pt2") != digest("c.pt2")


def test_the_child_finds_neffcache_as_installed_not_through_the_checkout(tmp_path: Path) -> None:
    """The compile child runs `python -m neffcache.workers.backends.inductor_child`: the package
    comes from the install (editable or wheel), so the worker adds nothing to PYTHONPATH."""
    assert "PYTHONPATH" not in child_env(tmp_path, manifest([1], isa="x86-64-v3"), base={"PATH": "/usr/bin"})
    given = {"PATH": "/usr/bin", "PYTHONPATH": "/opt/site"}
    assert child_env(tmp_path, manifest([1], isa="x86-64-v3"), base=given)["PYTHONPATH"] == "/opt/site"
