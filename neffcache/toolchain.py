"""What neffcache compiles for and with: targets, CPU ISA levels, runtimes, Neuron packages, and
how their versions are spelled. Each of these facts is defined here and nowhere else.

Shared by the service, the workers and the client: pure, standard library only, no I/O.
"""

from __future__ import annotations

# --- targets and ISA levels ---------------------------------------------------------------------
NEURON_TARGETS = ("trn1", "trn1n", "inf2", "trn2", "trn3")  # built by neuronx-cc
INDUCTOR_TARGETS = ("cpu", "cuda")  # built by inductor
TARGETS = NEURON_TARGETS + INDUCTOR_TARGETS

# x86-64 micro-architecture levels (psABI), lowest first. "native" is not among them on purpose:
# it means "whatever the compile host has", which is exactly what makes a package crash on another host.
CPU_ISA_LEVELS = ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4")
# AVX2 (v3) runs on every x86 server generation still in service; v4 (AVX-512) does not.
DEFAULT_CPU_ISA = "x86-64-v3"

# --- runtimes ----------------------------------------------------------------------------------
NEURON_RUNTIME = "neuron-runtime"
TORCH_RUNTIME = "torch"
RUNTIME_NAMES = (NEURON_RUNTIME, TORCH_RUNTIME)

# --- Neuron packages ---------------------------------------------------------------------------
COMPILER_PACKAGE = "neuronx-cc"  # pip package of the compiler
TORCH_NEURONX_PACKAGE = "torch-neuronx"  # pip package of torch_neuronx.trace (the torch-neuronx backend)
TORCH_PACKAGE = "torch"
RUNTIME_PACKAGE = "aws-neuronx-runtime-lib"  # Debian package of the Neuron runtime
# Asks dpkg for the installed runtime's version (Debian form: pass it to debian_upstream_version).
RUNTIME_DPKG_QUERY = ("dpkg-query", "-W", "-f=${Version}", RUNTIME_PACKAGE)

# --- versions ----------------------------------------------------------------------------------
# A compiler or runtime version as a spec may name it: "2.27.5334.0+2d6a2ba2b", "2.13.0+cpu".
VERSION_CHARS = r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}"
VERSION_PATTERN = rf"^{VERSION_CHARS}$"


def release_version(version: str) -> str:
    """'2.27.5334.0+2d6a2ba2b' -> '2.27.5334.0': the release, without the build."""
    return version.split("+", 1)[0]


def debian_upstream_version(version: str) -> str:
    """'1:2.34.10.0-1a2b3c4d5' -> '2.34.10.0': a Debian version (as dpkg-query prints it) without
    its epoch 'N:' and its Debian revision; surrounding whitespace is dropped."""
    version = version.strip()
    if ":" in version:
        version = version.split(":", 1)[1]
    return version.split("-", 1)[0]


def version_key(version: str) -> tuple[int, ...]:
    """A sort key for dotted versions ('2.31.1' < '2.32.0'); a part that is not a number sorts first."""
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))
