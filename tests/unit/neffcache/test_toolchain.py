"""neffcache/toolchain.py: the one home of targets, ISA levels, runtimes, Neuron packages and version
spellings; and the modules that used to keep their own copy now use it."""

from __future__ import annotations

import re

import pytest

from neffcache import toolchain
from neffcache.toolchain import debian_upstream_version, release_version, version_key


@pytest.mark.parametrize(("dpkg", "upstream"), [
    ("2.34.10.0-5a8c1f2b3\n", "2.34.10.0"),  # as dpkg-query prints it
    ("1:2.20.22.0-1", "2.20.22.0"),  # an epoch
    ("2.19.0.0", "2.19.0.0"),  # no revision
    ("  2.19.0.0  ", "2.19.0.0"),
    ("", ""),  # nothing installed: empty, which callers read as "unknown"
])
def test_debian_upstream_version(dpkg: str, upstream: str) -> None:
    assert debian_upstream_version(dpkg) == upstream


@pytest.mark.parametrize(("version", "release"), [
    ("2.27.5334.0+2d6a2ba2b", "2.27.5334.0"),
    ("2.27.5334.0", "2.27.5334.0"),
    ("2.13.0+cpu", "2.13.0"),
    ("1+a+b", "1"),
])
def test_release_version_drops_the_build(version: str, release: str) -> None:
    assert release_version(version) == release


def test_version_key_orders_dotted_versions_numerically() -> None:
    versions = ["2.10.0", "2.9.1", "2.32.0", "2.3.0", "2.31.1", "2.x.0"]
    assert sorted(versions, key=version_key) == ["2.x.0", "2.3.0", "2.9.1", "2.10.0", "2.31.1", "2.32.0"]
    assert version_key("2.31.1") == (2, 31, 1)


def test_targets_isa_levels_and_runtimes() -> None:
    assert toolchain.TARGETS == toolchain.NEURON_TARGETS + toolchain.INDUCTOR_TARGETS
    assert len(set(toolchain.TARGETS)) == len(toolchain.TARGETS)
    assert toolchain.DEFAULT_CPU_ISA in toolchain.CPU_ISA_LEVELS
    assert "native" not in toolchain.CPU_ISA_LEVELS
    assert toolchain.RUNTIME_NAMES == (toolchain.NEURON_RUNTIME, toolchain.TORCH_RUNTIME)
    assert toolchain.RUNTIME_DPKG_QUERY[-1] == toolchain.RUNTIME_PACKAGE == "aws-neuronx-runtime-lib"


@pytest.mark.parametrize(("version", "ok"), [
    ("2.27.5334.0+2d6a2ba2b", True), ("2.13.0+cpu", True), ("v1_rc-2", True),
    ("", False), ("+2.0", False), ("2.0/../x", False), ("2 0", False), ("1" * 65, False),
])
def test_version_pattern(version: str, ok: bool) -> None:
    assert bool(re.fullmatch(toolchain.VERSION_PATTERN, version)) is ok


def test_every_part_uses_the_one_definition() -> None:
    """The modules that once kept their own copy of a fact now hold the very same object."""
    from neffcache import flags, flags_inductor, key, sdk, spec
    from neffcache.client import neuron_cache, runtime, specs
    from neffcache.workers.backends import inductor, neuronx_cc

    assert spec.TARGETS is toolchain.TARGETS
    assert spec.NEURON_TARGETS is flags.NEURON_TARGETS is neuronx_cc.NEURON_TARGETS is specs.NEURON_TARGETS \
        is toolchain.NEURON_TARGETS
    assert spec.COMPILERS["inductor"]["targets"] is flags_inductor.INDUCTOR_TARGETS is toolchain.INDUCTOR_TARGETS
    assert flags_inductor.CPU_ISA_LEVELS is key.CPU_ISA_LEVELS is inductor.CPU_ISA_LEVELS is toolchain.CPU_ISA_LEVELS
    assert flags_inductor.DEFAULT_CPU_ISA is key.DEFAULT_CPU_ISA is toolchain.DEFAULT_CPU_ISA
    assert sdk.RUNTIME_PACKAGE is runtime.RUNTIME_PACKAGE is neuronx_cc.RUNTIME_PACKAGE is toolchain.RUNTIME_PACKAGE
    assert runtime.RUNTIME_NAMES is toolchain.RUNTIME_NAMES
    assert runtime.debian_upstream_version is neuronx_cc.debian_upstream_version is debian_upstream_version
    assert sdk.release_version is release_version
    assert spec.VERSION_PATTERN is toolchain.VERSION_PATTERN
    assert neuron_cache.compiler_version_of("neuronxcc-2.27.5334.0+2d6a2ba2b") == "2.27.5334.0+2d6a2ba2b"
    assert neuron_cache.compiler_version_of("neuronxcc-../etc") is None
