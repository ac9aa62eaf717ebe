"""Small real models for tests: exported with torch.export and saved as `.pt2`.

Importing this module imports torch; only tests that need a real model should import it.

Determinism: `torch.export.save` (torch 2.13, CPU) writes fixed zip timestamps (1980-01-01) and a
serialization id derived from the content, so the same program gives the same bytes, BUT the zip's
top-level folder is named after the file's stem when given a path (`a.pt2` -> `a/...`), so the
same model saved as two different file names hashes differently. This helper saves through an
in-memory buffer (root folder "archive/") and writes the bytes itself, so the same seed and
shapes give byte-identical files whatever the path; `test_backend_inductor` checks it.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch


class TinyMLP(torch.nn.Module):
    """Linear -> ReLU -> Linear."""

    def __init__(self, features: int = 64, hidden: int = 32, out: int = 8) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(features, hidden)
        self.relu = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def save_tiny_exported_model(
    path: Path, batch: int = 8, features: int = 64, seed: int = 0
) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Export a seeded TinyMLP for input `x` of shape (batch, features), float32, and save it.

    Returns the eager module (in eval mode) and the example inputs, so a test can compare the
    compiled model's outputs with the eager ones. The manifest input for it is
    `{"name": "x", "shape": [batch, features], "dtype": "float32"}`.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model = TinyMLP(features=features)
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * 0.1)
    model.eval()
    example_inputs = (torch.randn(batch, features, generator=gen),)
    exported = torch.export.export(model, example_inputs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    path.write_bytes(buffer.getvalue())
    return model, example_inputs
