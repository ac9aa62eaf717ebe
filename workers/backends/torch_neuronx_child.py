"""The torch-neuronx compile itself, run in a child process by workers/backends/torch_neuronx.py:

    python -m neffcache.workers.backends.torch_neuronx_child --model M --manifest manifest.json
           --output-dir out --compiler-workdir neuronx-cc

A separate process so that a timeout, a cancel or a memory blowup kills only this, never the
worker. Loads the model (a torch.export program: its `module()`; or a TorchScript module), builds
the example inputs the manifest describes, checks that they fit the model, and calls

    torch_neuronx.trace(model, inputs, compiler_workdir=..., compiler_args=[<flags>, --target, <t>],
                        inline_weights_to_neff=<manifest>)

then saves the returned TorchScript module as out/model.pt and copies every NEFF the compiler
wrote under the compiler work dir into out/ (see `neff_names`). Everything it prints goes to the
job's compile log; a failure's last line says what went wrong.

Exit status: 0 success; 3 the example inputs do not fit the model (the worker classes it
invalid_input); 4 neuronx-cc was killed by SIGKILL (out of memory, transient); 2 the manifest asks
for something impossible; 1 anything else: an unsupported operator, a compiler error (Python's
traceback, whose last line names it, is in the log).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from neffcache.workers.backends.inductor_child import (
    EXIT_INVALID_INPUT,
    EXIT_MISMATCH,
    InputsMismatch,
    ManifestMismatch,
    check_inputs,
)

EXIT_COMPILER_KILLED = 4
MODEL_FILE = "model.pt"
FORMATS = ("torch-export", "torchscript")
# How torch_neuronx reports a compiler that did not exit 0: "neuronx-cc failed with 70".
_COMPILER_FAILED = re.compile(r"neuronx-cc failed with (-?\d+)")
_SIGKILL_STATUS = -9


class CompilerKilled(Exception):
    """neuronx-cc was killed by SIGKILL under torch_neuronx.trace: exit 4 with this message."""


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} torch-neuronx: {message}", flush=True)


def example_inputs(manifest_inputs: list[dict[str, Any]]) -> tuple[Any, ...]:
    """One tensor per manifest input, of its shape and dtype: ones for floating point, zeros else
    (a valid index for every embedding). Only shapes and dtypes reach the traced graph."""
    import torch

    tensors = []
    for item in manifest_inputs:
        dtype = getattr(torch, str(item["dtype"]), None)
        if not isinstance(dtype, torch.dtype):
            raise ManifestMismatch(f"input {item.get('name')!r}: unknown dtype {item['dtype']!r}")
        shape = [int(d) for d in item["shape"]]
        fill = torch.ones if dtype.is_floating_point else torch.zeros
        tensors.append(fill(shape, dtype=dtype))
    return tuple(tensors)


def load_model(model: Path, fmt: str, manifest_inputs: list[dict[str, Any]]) -> Any:
    """The module torch_neuronx.trace is given: a torch.export program's `module()` (after its
    input specs are checked against the manifest's inputs), or the TorchScript module."""
    import torch

    with open(model, "rb") as f:  # a file object: the worker stores blobs without a suffix
        if fmt == "torch-export":
            program = torch.export.load(f)
            check_inputs(program, manifest_inputs)
            return program.module()
        if fmt == "torchscript":
            return torch.jit.load(f, map_location="cpu")
    raise ManifestMismatch(f"torch-neuronx traces model formats {', '.join(FORMATS)}, not {fmt!r}")


def check_runs(module: Any, inputs: tuple[Any, ...]) -> None:
    """The model must accept the example inputs on the CPU (a TorchScript module has no input
    specs to check them against): InputsMismatch when calling it raises."""
    import torch

    try:
        with torch.no_grad():
            module(*inputs)
    except Exception as exc:  # whatever the model raises for inputs it cannot take
        # A TorchScript error is the interpreter's traceback; its last line says what went wrong.
        reason = ([line.strip() for line in str(exc).splitlines() if line.strip()] or [""])[-1]
        raise InputsMismatch(f"the example inputs do not fit the model: {type(exc).__name__}: {reason}") from exc


def compiler_args(manifest: dict[str, Any]) -> list[str]:
    """The manifest's canonical neuronx-cc flags, and its target (trace's default is the host's)."""
    return [*(str(flag) for flag in manifest["compiler"].get("flags", [])), "--target", str(manifest["target"])]


def neff_names(workdir: Path) -> dict[str, Path]:
    """Every NEFF under the compiler work dir, by the name it is published under: its path relative
    to the work dir with "/" as "--" ("graph.neff", "sg01--graph.neff")."""
    found = sorted(p for p in workdir.rglob("*.neff") if p.is_file())
    return {"--".join(p.relative_to(workdir).parts): p for p in found}


def trace(model: Path, manifest: dict[str, Any], output_dir: Path, workdir: Path) -> dict[str, Path]:

    fmt = str(manifest.get("model", {}).get("format"))
    say(f"loading torch {importlib.metadata.version('torch')} for {model.name} ({fmt})")
    module = load_model(model, fmt, manifest.get("inputs", []))
    inputs = example_inputs(manifest.get("inputs", []))
    if fmt == "torchscript":
        check_runs(module, inputs)
    import torch

    try:
        # By name: the package installs only from the Neuron repository, so it has no stubs here.
        torch_neuronx = importlib.import_module("torch_neuronx")
    except ImportError as exc:
        raise ManifestMismatch(f"torch_neuronx cannot be imported here: {exc}") from exc
    args = compiler_args(manifest)
    inline = bool(manifest["compiler"].get("inline_weights_to_neff", True))
    say(f"tracing with torch-neuronx {importlib.metadata.version('torch-neuronx')} for {manifest['target']}: "
        f"compiler_args={args} inline_weights_to_neff={inline}")
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        traced = torch_neuronx.trace(module, inputs, compiler_workdir=str(workdir), compiler_args=args,
                                     inline_weights_to_neff=inline)
    except RuntimeError as exc:
        status = _COMPILER_FAILED.search(str(exc))
        if status and int(status.group(1)) == _SIGKILL_STATUS:
            raise CompilerKilled(f"neuronx-cc was killed by SIGKILL (most likely out of memory): {exc}") from exc
        raise
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(output_dir / MODEL_FILE))
    written = {MODEL_FILE: output_dir / MODEL_FILE}
    for name, path in neff_names(workdir).items():
        written[name] = Path(shutil.copyfile(path, output_dir / name))
    sizes = ", ".join(f"{name} ({path.stat().st_size} bytes)" for name, path in written.items())
    say(f"wrote {sizes} in {time.monotonic() - started:.1f} s")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torch_neuronx_child", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--compiler-workdir", required=True, type=Path)
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    ends = ((ManifestMismatch, EXIT_MISMATCH), (InputsMismatch, EXIT_INVALID_INPUT),
            (CompilerKilled, EXIT_COMPILER_KILLED))
    # Anything else (an unsupported operator, a compiler error) propagates: Python prints its
    # traceback, whose last line names it, and exits 1.
    try:
        trace(args.model, manifest, args.output_dir, args.compiler_workdir)
    except (ManifestMismatch, InputsMismatch, CompilerKilled) as exc:
        message = " ".join(str(exc).split())  # one line: the log's last line is the job's message
        print(f"error: {message}", flush=True)
        return next(code for kind, code in ends if isinstance(exc, kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
