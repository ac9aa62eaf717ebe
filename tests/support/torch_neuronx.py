"""What the torch-neuronx tests share: where the torch_neuronx test double lives, the environment
that puts it (and the neuronx-cc double) in reach of a worker, and small PyTorch models saved in
the two formats the backend takes."""

from __future__ import annotations

import io
import os
import sys
from typing import Any

import torch

from tests.support.stack import REPO

# The folder that holds the stand-in `torch_neuronx` package and its dist-info: put on the
# PYTHONPATH of a worker (and so of its compile child) by the tests only.
TORCH_NEURONX_DOUBLE = REPO / "tests" / "doubles" / "torch_neuronx_double"
DOUBLE_BIN = REPO / "tests" / "doubles" / "bin"
DOUBLE_TORCH_NEURONX_VERSION = "2.13.0.2.16.0"  # its dist-info's version
TORCH_VERSION = torch.__version__
NEURONX_CC_VERSION = "2.27.5334.0+2d6a2ba2b"  # the neuronx-cc double's default --version
NEURON_RUNTIME = "2.34.10.0"  # the runtime of SDK 2.32.0, which ships that neuronx-cc


def double_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """`base` (the process's environment) with both doubles in reach: the neuronx-cc double first
    on PATH, run by this interpreter, and the torch_neuronx double first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PATH"] = f"{DOUBLE_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TORCH_NEURONX_DOUBLE), env.get("PYTHONPATH")) if p)
    env["NEURONX_CC_DOUBLE_PYTHON"] = sys.executable
    return env


class TinyModel(torch.nn.Module):
    """An embedding and a linear layer over token ids; `markers` become buffers named after them
    (double_fail, double_trace_kill, ...: how the doubles are steered, see their docstrings)."""

    def __init__(self, seed: int = 0, markers: tuple[str, ...] = ()) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = torch.nn.Embedding(64, 16)
        self.proj = torch.nn.Linear(16, 4)
        for name in markers:
            self.register_buffer(name, torch.zeros(1))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.proj(self.emb(input_ids)))


class NonzeroModel(torch.nn.Module):
    """A model whose output shape depends on the data (an operator no NEFF can hold)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nonzero(x > 0.5)


def token_ids(shape: tuple[int, ...] = (1, 8)) -> torch.Tensor:
    return (torch.arange(int(torch.tensor(shape).prod())) % 64).reshape(shape)


def export_bytes(model: torch.nn.Module, *example: torch.Tensor) -> bytes:
    """The model as a saved torch.export program (.pt2 bytes)."""
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(model.eval(), example), buffer)
    return buffer.getvalue()


def torchscript_bytes(model: torch.nn.Module, *example: torch.Tensor) -> bytes:
    """The model as a saved TorchScript module (traced)."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(model.eval(), example), buffer)
    return buffer.getvalue()


def manifest(fmt: str = "torch-export", target: str = "inf2", flags: list[str] | None = None,
             shape: list[int] | None = None, dtype: str = "int64", inline: bool = True) -> dict[str, Any]:
    """A torch-neuronx key manifest for the doubles' toolchain."""
    return {
        "key_version": 1,
        "namespace": "default",
        "model": {"format": fmt, "digest": "sha256:" + "0" * 64},
        "inputs": [{"name": "input_ids", "shape": shape or [1, 8], "dtype": dtype}],
        "target": target,
        "isa": None,
        "compiler": {
            "name": "torch-neuronx", "version": DOUBLE_TORCH_NEURONX_VERSION,
            "flags": list(flags or []), "torch_version": TORCH_VERSION,
            "neuronx_cc_version": NEURONX_CC_VERSION, "inline_weights_to_neff": inline,
        },
        "runtime": {"name": "neuron-runtime", "version": NEURON_RUNTIME},
        "allow_toolchain_mismatch": False,
    }
