"""TEST DOUBLE of the `torch_neuronx` package (AWS torch-neuronx). Not torch-neuronx; never
installed, never offered as a backend.

torch-neuronx installs only from AWS's own package repository, so the torch-neuronx backend
(workers/backends/torch_neuronx.py) is tested against this stand-in, which the tests put on the
worker's PYTHONPATH (the folder above this one, with the `torch_neuronx-*.dist-info` that makes
`importlib.metadata` report its version). It implements the documented contract of
`torch_neuronx.trace` (AWS "PyTorch NeuronX Tracing API for Inference") and nothing more:

    trace(func, example_inputs, *_, input_output_aliases={}, compiler_workdir=None,
          compiler_args=None, partitioner_config=None, inline_weights_to_neff=True,
          cpu_backend=False) -> torch.jit.ScriptModule

It records the model's graph with `torch.jit.trace` (on the CPU), writes a stand-in of the HLO
module into `compiler_workdir` (a temp dir when None), and runs `neuronx-cc compile <it>
--framework XLA [--target trn1] --output graph.neff <compiler_args>` there: the neuronx-cc test
double on PATH (tests/doubles/bin), which writes a real-format NEFF. A compiler that exits non-zero
raises `RuntimeError("neuronx-cc failed with <status>")`, as the real package does. The returned
module runs the traced graph on the CPU (so `torch.jit.load` of it gives the eager result without
a Neuron device) and carries the NEFF as its buffer `neff`.

Behaviour follows the MODEL, so each job can ask for its own:
    an operator in UNSUPPORTED_OPS     RuntimeError before the compiler runs (no static shape)
    a parameter or buffer named        the stand-in HLO carries `double:<mode>`, which steers the
      double_<mode> (double_fail,        neuronx-cc double (see tests/doubles/neuronx_cc_double.py):
      double_hang, double_kill,          exit 70, hang, SIGKILL, a broken NEFF, ...;
      double_truncated, ...,             double_sleep_<n>: double:sleep=<n>
      double_sleep_<n>)
    a buffer named double_trace_kill   this process SIGKILLs itself while tracing (out of memory)
    a buffer named double_trace_hang   this process hangs while tracing

Environment:
    TORCH_NEURONX_DOUBLE_ENV_DUMP  a file to which each trace writes its environment (JSON), so a
                                   test can see what reached the compile

The stand-in HLO holds the graph, the example inputs' shapes and dtypes and, with
inline_weights_to_neff (the default), the sha256 of the weights: the NEFF changes with them then.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import torch

__version__ = "2.13.0.2.16.0"  # the dist-info beside this package says the same

# Operators whose output shape depends on the data: no static-shape NEFF can hold them.
UNSUPPORTED_OPS = ("aten::nonzero", "aten::unique", "aten::_unique2", "aten::masked_select")
DEFAULT_TARGET = "trn1"
NEFF_NAME = "graph.neff"
HLO_NAME = "model.hlo_module.pb"
_MARKER_PREFIX = "double_"


def trace(
    func: Any,
    example_inputs: Any,
    *_: Any,
    input_output_aliases: dict[Any, Any] | None = None,
    compiler_workdir: str | os.PathLike[str] | None = None,
    compiler_args: str | Sequence[str] | None = None,
    partitioner_config: Any = None,
    inline_weights_to_neff: bool = True,
    cpu_backend: bool = False,
) -> torch.jit.ScriptModule:
    if _:
        raise TypeError("trace() takes 2 positional arguments; the options are keyword-only")
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    dump = os.environ.get("TORCH_NEURONX_DOUBLE_ENV_DUMP")
    if dump:
        with open(dump, "w", encoding="utf-8") as f:
            json.dump(dict(os.environ), f)
    args = _split_args(compiler_args)
    names = _state_names(func)
    if "double_trace_kill" in names:
        os.kill(os.getpid(), signal.SIGKILL)
    if "double_trace_hang" in names:
        while True:
            time.sleep(3600)
    with torch.no_grad():
        graph = torch.jit.trace(func, inputs, check_trace=False)
    kinds = {node.kind() for node in graph.inlined_graph.nodes()}
    unsupported = sorted(kinds & set(UNSUPPORTED_OPS))
    if unsupported:
        raise RuntimeError(
            f"Operator {unsupported[0]} is not supported on Neuron: its output shape depends on the "
            "input data (torch_neuronx test double)"
        )
    workdir = os.fspath(compiler_workdir) if compiler_workdir else tempfile.mkdtemp(prefix="neuronx-cc-")
    os.makedirs(workdir, exist_ok=True)
    hlo = os.path.join(workdir, HLO_NAME)
    with open(hlo, "w", encoding="utf-8") as f:
        f.write(_stand_in_hlo(graph, inputs, names, func if inline_weights_to_neff else None))
    neff_path = os.path.join(workdir, NEFF_NAME)
    target = [] if any(a == "--target" or a.startswith("--target=") for a in args) else ["--target", DEFAULT_TARGET]
    argv = ["neuronx-cc", "compile", hlo, "--framework", "XLA", *target, "--output", neff_path, *args]
    print(f"torch_neuronx (test double): {' '.join(argv)}", flush=True)
    status = subprocess.run(argv, cwd=workdir, stdin=subprocess.DEVNULL).returncode
    if status != 0:
        raise RuntimeError(f"neuronx-cc failed with {status}")
    with open(neff_path, "rb") as f:
        neff = f.read()
    with torch.no_grad():
        return torch.jit.trace(_NeuronGraph(graph, neff), inputs, check_trace=False)


class _NeuronGraph(torch.nn.Module):
    """What trace returns, before scripting: the graph (run on the CPU here) and its NEFF."""

    def __init__(self, graph: torch.jit.ScriptModule, neff: bytes) -> None:
        super().__init__()
        self.graph_module = graph
        self.register_buffer("neff", torch.frombuffer(bytearray(neff), dtype=torch.uint8))

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.graph_module(*inputs)


def _split_args(compiler_args: str | Sequence[str] | None) -> list[str]:
    """compiler_args as a list: a string is split on whitespace (the documented str form)."""
    if compiler_args is None:
        return []
    if isinstance(compiler_args, str):
        return compiler_args.split()
    return [str(a) for a in compiler_args]


def _state_names(func: Any) -> list[str]:
    """The last part of every parameter and buffer name of a module (none for a function)."""
    if not isinstance(func, torch.nn.Module):
        return []
    return [name.rsplit(".", 1)[-1] for name, _ in (*func.named_parameters(), *func.named_buffers())]


def _markers(names: list[str]) -> list[str]:
    """`double_<mode>` -> the neuronx-cc double's `double:<mode>` (`double_sleep_2` -> `double:sleep=2`)."""
    found = []
    for name in names:
        if name.startswith(_MARKER_PREFIX) and not name.startswith("double_trace_"):
            mode = name[len(_MARKER_PREFIX):]
            if mode.startswith("sleep_"):
                mode = "sleep=" + mode[len("sleep_"):]
            found.append(f"double:{mode}")
    return found


def _stand_in_hlo(graph: torch.jit.ScriptModule, inputs: tuple[Any, ...], names: list[str],
                  weights_of: Any) -> str:
    lines = ["HloModule (torch_neuronx test double stand-in)", str(graph.inlined_graph)]
    lines += [f"input {i}: {tuple(t.shape)} {t.dtype}" for i, t in enumerate(inputs)]
    if weights_of is not None:
        digest = hashlib.sha256()
        for name, tensor in sorted(weights_of.state_dict().items()):
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            digest.update(name.encode() + b"\0" + raw)
        lines.append(f"inlined weights sha256 {digest.hexdigest()}")
    lines += _markers(names)
    return "\n".join(lines) + "\n"
