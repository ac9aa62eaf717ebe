"""Which backend a worker runs: the name -> class table, and `load_backend`.

This module imports `base` and every backend; `base` (which every backend imports) imports no
backend, so there is no import circle. Add a backend here, and nowhere else.
"""

from __future__ import annotations

from neffcache.settings import Settings
from neffcache.workers.backends.base import Backend
from neffcache.workers.backends.inductor import InductorBackend
from neffcache.workers.backends.neuronx_cc import NeuronxCcBackend
from neffcache.workers.backends.torch_neuronx import TorchNeuronxBackend

# NEFFCACHE_WORKER_BACKEND -> backend class, by each backend's own name.
BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (InductorBackend, NeuronxCcBackend, TorchNeuronxBackend)
}
# Other spellings accepted for a backend's name.
ALIASES: dict[str, str] = {"neuronx_cc": "neuronx-cc", "neuronxcc": "neuronx-cc", "torch_neuronx": "torch-neuronx"}


def load_backend(settings: Settings) -> Backend:
    """The backend `settings.worker_backend` names: "inductor", "neuronx-cc" or "torch-neuronx"."""
    name = settings.worker_backend.strip().lower()
    cls = BACKENDS.get(ALIASES.get(name, name))
    if cls is None:
        raise ValueError(
            f"unknown worker backend {settings.worker_backend!r}: "
            f"set NEFFCACHE_WORKER_BACKEND to {' or '.join(repr(n) for n in BACKENDS)}"
        )
    return cls(settings)  # type: ignore[call-arg]
