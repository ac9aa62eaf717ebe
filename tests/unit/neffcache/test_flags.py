"""Flag canonicalisation: equivalent spellings collapse, non-semantic flags go, bad ones refused."""

from __future__ import annotations

import pytest

from neffcache.errors import InvalidFlags, InvalidSpec
from neffcache.flags import (
    canonical_flags,
    canonical_flags_and_isa,
    canonical_inductor_flags,
    canonical_neuronx_cc_flags,
)
from neffcache.toolchain import DEFAULT_CPU_ISA

# --- neuronx-cc: input -> canonical output ----------------------------------------------------
NEURON_CASES = [
    # optimisation level: five spellings, one form
    (["-O2"], "trn1", ["--optlevel=2"]),
    (["-O", "2"], "trn1", ["--optlevel=2"]),
    (["-O=2"], "trn1", ["--optlevel=2"]),
    (["--optlevel", "2"], "trn1", ["--optlevel=2"]),
    (["--optlevel=2"], "trn1", ["--optlevel=2"]),
    (["-O1"], "inf2", ["--optlevel=1"]),
    (["-O3"], "trn1n", ["--optlevel=3"]),
    # logical NeuronCore config: every spelling, trn2 and trn3
    (["-lnc", "2"], "trn2", ["--logical-nc-config=2"]),
    (["-lnc=2"], "trn2", ["--logical-nc-config=2"]),
    (["--lnc", "1"], "trn2", ["--logical-nc-config=1"]),
    (["--lnc=1"], "trn3", ["--logical-nc-config=1"]),
    (["--logical-nc-config", "2"], "trn3", ["--logical-nc-config=2"]),
    (["--logical-nc-config=2"], "trn2", ["--logical-nc-config=2"]),
    # enumerated options, separate or attached value
    (["--auto-cast", "matmult"], "trn1", ["--auto-cast=matmult"]),
    (["--auto-cast=none"], "trn1", ["--auto-cast=none"]),
    (["--auto-cast=all", "--auto-cast-type", "fp8_e4m3"], "trn1",
     ["--auto-cast=all", "--auto-cast-type=fp8_e4m3"]),
    (["--auto-cast-type=tf32"], "trn1", ["--auto-cast-type=tf32"]),
    (["--model-type", "transformer"], "trn1", ["--model-type=transformer"]),
    (["--model-type=unet-inference"], "inf2", ["--model-type=unet-inference"]),
    (["--model-type=cnn-training"], "trn2", ["--model-type=cnn-training"]),
    (["--distribution-strategy", "llm-training"], "trn1", ["--distribution-strategy=llm-training"]),
    # the guide says NEMO is the older name of llm-training
    (["--distribution-strategy=NEMO"], "trn1", ["--distribution-strategy=llm-training"]),
    (["--distribution-strategy=nemo"], "trn1", ["--distribution-strategy=llm-training"]),
    (["--native-int64=enabled"], "trn2", ["--native-int64=enabled"]),
    (["--implicit-integer-downcast", "none"], "trn1", ["--implicit-integer-downcast=none"]),
    (["--implicit-integer-downcast=pow,dot,pow"], "trn1", ["--implicit-integer-downcast=dot,pow"]),
    # switches
    (["--enable-saturate-infinity"], "trn1", ["--enable-saturate-infinity"]),
    (["--enable-fast-context-switch", "--enable-fast-loading-neuron-binaries"], "inf2",
     ["--enable-fast-context-switch", "--enable-fast-loading-neuron-binaries"]),
    (["--enable-mixed-precision-accumulation"], "trn1", ["--enable-mixed-precision-accumulation"]),
    (["--disable-mixed-precision-accumulation"], "trn2",
     ["--disable-mixed-precision-accumulation"]),
    # known flags sorted by name
    (["--optlevel=1", "--model-type=transformer", "--auto-cast=none"], "trn1",
     ["--auto-cast=none", "--model-type=transformer", "--optlevel=1"]),
    # exact repeats collapse, also across spellings
    (["-O2", "--optlevel=2", "-O", "2"], "trn1", ["--optlevel=2"]),
    (["--enable-saturate-infinity", "--enable-saturate-infinity"], "trn1",
     ["--enable-saturate-infinity"]),
    # dropped: output, logs, verbosity, work and cache folders, framework XLA, matching target
    (["--output", "model.neff"], "trn1", []),
    (["--output=model.neff"], "trn1", []),
    (["--logfile", "log.txt"], "trn1", []),
    (["--logfile-verbose=debug"], "trn1", []),
    (["--verbose"], "trn1", []),
    (["--verbose", "info"], "trn1", []),
    (["--verbose=DEBUG"], "trn1", []),
    (["--verbose", "-O1"], "trn1", ["--optlevel=1"]),
    (["--workdir", "/tmp/w"], "trn1", []),
    (["--compile_workdir=/tmp/w"], "trn1", []),
    (["--compile-workdir", "/tmp/w"], "trn1", []),
    (["--cache_dir=/var/tmp/neuron-compile-cache"], "trn1", []),
    (["--cache-dir", "/c"], "trn1", []),
    (["--temp-dir", "/t"], "trn1", []),
    (["--tmpdir=/t"], "trn1", []),
    (["--retry_failed_compilation"], "trn1", []),
    (["--framework", "XLA"], "trn1", []),
    (["--framework=XLA"], "trn1", []),
    (["--target", "trn1"], "trn1", []),
    (["--target=trn2"], "trn2", []),
    # unknown flags: verbatim, in order, after the known ones, with their words attached
    (["--foo", "bar", "-O1"], "trn1", ["--optlevel=1", "--foo", "bar"]),
    (["--zeta", "--alpha=1", "--auto-cast=none"], "trn1",
     ["--auto-cast=none", "--zeta", "--alpha=1"]),
    (["--tensorizer-options=--enable-ccop-compute-overlap"], "trn2",
     ["--tensorizer-options=--enable-ccop-compute-overlap"]),
    (["--internal-hlo2tensorizer-options", "--verify-hlo --num-concat-graphs=8"], "trn1",
     ["--internal-hlo2tensorizer-options", "--verify-hlo --num-concat-graphs=8"]),
    (["--execute-repetition", "1", "a", "--x"], "trn1", ["--execute-repetition", "1", "a", "--x"]),
    # a full realistic command line
    (["--framework", "XLA", "--target", "trn1", "--model-type", "transformer", "-O1",
      "--auto-cast", "none", "--output", "/w/model.neff", "--logfile", "/w/log.txt",
      "--verbose=info", "--enable-fast-loading-neuron-binaries"], "trn1",
     ["--auto-cast=none", "--enable-fast-loading-neuron-binaries", "--model-type=transformer",
      "--optlevel=1"]),
    ([], "trn1", []),
]


@pytest.mark.parametrize(("flags", "target", "expected"), NEURON_CASES)
def test_neuronx_cc_canonical_form(flags: list[str], target: str, expected: list[str]) -> None:
    assert canonical_neuronx_cc_flags(flags, target) == expected
    # the dispatcher gives the same, and canonical output is a fixed point
    assert canonical_flags("neuronx-cc", flags, target) == expected
    assert canonical_neuronx_cc_flags(expected, target) == expected


def test_neuronx_cc_isa_is_none() -> None:
    assert canonical_flags_and_isa("neuronx-cc", ["-O1"], "trn1") == (None, ["--optlevel=1"])


# --- neuronx-cc: refusals ---------------------------------------------------------------------
def _refused(flags: list[object], target: str = "trn1", compiler: str = "neuronx-cc") -> str:
    with pytest.raises(InvalidFlags) as caught:
        canonical_flags(compiler, flags, target)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_flags"
    assert caught.value.detail.startswith(("compiler.flags", "compiler.name"))
    return caught.value.detail


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--optlevel=7"], ["--optlevel=7", "1, 2, 3"]),
        (["-O7"], ["-O7", "1, 2, 3"]),
        (["-O", "0"], ["-O 0", "1, 2, 3"]),
        (["--auto-cast", "fp16"], ["--auto-cast fp16", "none, matmult, all"]),
        (["--auto-cast-type=fp64"], ["--auto-cast-type=fp64", "bf16, fp16, tf32, fp8_e4m3"]),
        (["--model-type=cnn"], ["--model-type=cnn", "generic"]),
        (["--distribution-strategy=ddp"], ["--distribution-strategy=ddp", "llm-training"]),
        (["--implicit-integer-downcast=dot,sqrt"], ["--implicit-integer-downcast", "dot"]),
    ],
)
def test_bad_value_refused_naming_flag_and_allowed_values(
    flags: list[str], words: list[str]
) -> None:
    detail = _refused(flags)
    for word in words:
        assert word in detail


@pytest.mark.parametrize(
    "flags",
    [["--optlevel"], ["-O"], ["--auto-cast"], ["--auto-cast", "--optlevel=1"], ["--auto-cast="],
     ["--output"], ["--logfile", "-O1"], ["--target"], ["--framework"]],
)
def test_missing_value_refused(flags: list[str]) -> None:
    detail = _refused(flags)
    assert "needs a value" in detail
    assert flags[0].rstrip("=") in detail


@pytest.mark.parametrize("target", ["trn1", "trn1n", "inf2"])
@pytest.mark.parametrize(
    "flags", [["-lnc", "2"], ["-lnc=1"], ["--logical-nc-config=2"], ["--lnc", "2"]]
)
def test_logical_nc_config_refused_off_trn2(flags: list[str], target: str) -> None:
    detail = _refused(flags, target)
    assert f"not target {target}" in detail
    assert "trn2" in detail


def test_native_int64_refused_on_trn1() -> None:
    assert "not target trn1" in _refused(["--native-int64=enabled"], "trn1")


def test_bad_lnc_value_refused() -> None:
    assert "1, 2" in _refused(["-lnc", "4"], "trn2")


@pytest.mark.parametrize(
    "flags",
    [["-O1", "-O2"], ["--optlevel=1", "-O", "3"], ["--auto-cast=none", "--auto-cast=all"],
     ["-lnc", "1", "--logical-nc-config=2"]],
)
def test_conflicting_duplicate_refused(flags: list[str]) -> None:
    detail = _refused(flags, "trn2")
    assert "given twice with different values" in detail


def test_contradicting_switches_refused() -> None:
    detail = _refused(
        ["--enable-mixed-precision-accumulation", "--disable-mixed-precision-accumulation"]
    )
    assert "contradict" in detail


@pytest.mark.parametrize("flags", [["--target=trn2"], ["--target", "trn2"]])
def test_target_mismatch_names_both(flags: list[str]) -> None:
    assert _refused(flags, "trn1") == "compiler.flags: --target=trn2 disagrees with target trn1"


def test_trn1n_is_not_trn1() -> None:
    assert "disagrees with target trn1n" in _refused(["--target=trn1"], "trn1n")


@pytest.mark.parametrize("flags", [["--framework", "tensorflow"], ["--framework=PYTORCH"]])
def test_non_xla_framework_refused(flags: list[str]) -> None:
    detail = _refused(flags)
    assert "--framework" in detail and "XLA" in detail


def test_switch_with_value_refused() -> None:
    assert "takes no value" in _refused(["--enable-saturate-infinity=true"])


@pytest.mark.parametrize("flags", [["model.hlo.pb"], ["-O1", "extra.pb"], ["--", "x.pb"], ["-"]])
def test_stray_word_refused(flags: list[str]) -> None:
    assert "not an option" in _refused(flags)


def test_known_flag_with_value_in_one_element_refused() -> None:
    assert "one argument per list element" in _refused(["--optlevel 2"])


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ([2], "must be a string"),
        ([None], "must be a string"),
        (["-O1", b"-O2"], "compiler.flags[1]"),
        ([""], "empty"),
        (["--foo\nbar"], "newline"),
        (["--foo\x00"], "NUL"),
        (["--foo\r"], "newline"),
    ],
)
@pytest.mark.parametrize("compiler", ["neuronx-cc", "inductor"])
def test_non_string_or_unsafe_token_refused(flags: list[object], words: str, compiler: str) -> None:
    target = "trn1" if compiler == "neuronx-cc" else "cpu"
    assert words in _refused(flags, target, compiler)


def test_flags_given_as_one_string_refused() -> None:
    assert "list of strings" in _refused("-O1")  # type: ignore[arg-type]


def test_unknown_compiler_refused() -> None:
    detail = _refused(["-O1"], compiler="gcc")
    assert "gcc" in detail


def test_wrong_target_for_compiler_refused() -> None:
    with pytest.raises(InvalidSpec, match="target"):
        canonical_neuronx_cc_flags([], "cpu")
    with pytest.raises(InvalidSpec, match="target"):
        canonical_inductor_flags([], "trn1")


# --- inductor: input -> (isa, canonical output) -----------------------------------------------
INDUCTOR_CASES = [
    ([], "cpu", DEFAULT_CPU_ISA, []),
    (["max_autotune=True"], "cpu", "x86-64-v3", ["max_autotune=True"]),
    # spaces around '=' trimmed; true/false any case -> True/False; other values verbatim
    (["max_autotune = true"], "cpu", "x86-64-v3", ["max_autotune=True"]),
    (["max_autotune=TRUE", "freezing=false"], "cpu", "x86-64-v3",
     ["freezing=False", "max_autotune=True"]),
    (["coordinate_descent_tuning=1"], "cpu", "x86-64-v3", ["coordinate_descent_tuning=1"]),
    (["cpp.threads=4"], "cpu", "x86-64-v3", ["cpp.threads=4"]),
    # sorted by name, exact repeats collapse
    (["b=1", "a=2", "b=1"], "cpu", "x86-64-v3", ["a=2", "b=1"]),
    (["aot_inductor.debug_compile=True"], "cpu", "x86-64-v3", ["aot_inductor.debug_compile=True"]),
    # cpp.march becomes the isa
    (["cpp.march=x86-64"], "cpu", "x86-64", []),
    (["cpp.march=x86-64-v2"], "cpu", "x86-64-v2", []),
    (["cpp.march=x86-64-v3", "max_autotune=True"], "cpu", "x86-64-v3", ["max_autotune=True"]),
    (["cpp.march = x86-64-v4"], "cpu", "x86-64-v4", []),
    # cuda.arch becomes the isa, either spelling
    (["cuda.arch=sm_90"], "cuda", "sm_90", []),
    (["cuda.arch=90"], "cuda", "sm_90", []),
    (["cuda.arch=sm_80", "max_autotune=True"], "cuda", "sm_80", ["max_autotune=True"]),
    # debug-only and parallelism options dropped
    (["trace.enabled=True", "trace.debug_dir=/tmp/x"], "cpu", "x86-64-v3", []),
    (["compile_threads=32", "worker_start_method=fork"], "cpu", "x86-64-v3", []),
    (["verbose_progress=True", "disable_progress=False"], "cpu", "x86-64-v3", []),
]


@pytest.mark.parametrize(("flags", "target", "isa", "expected"), INDUCTOR_CASES)
def test_inductor_canonical_form(
    flags: list[str], target: str, isa: str, expected: list[str]
) -> None:
    assert canonical_flags_and_isa("inductor", flags, target) == (isa, expected)
    assert canonical_inductor_flags(flags, target) == expected
    assert canonical_flags("inductor", flags, target) == expected


def test_inductor_isa_flag_is_a_fixed_point() -> None:
    isa, flags = canonical_flags_and_isa("inductor", ["cpp.march=x86-64-v4", "a=true"], "cpu")
    assert canonical_flags_and_isa("inductor", [*flags, f"cpp.march={isa}"], "cpu") == (isa, flags)


# --- inductor: refusals -----------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["max_autotune", "--max-autotune=True", "1abc=2", "a..b=1",
                                  "a.=1", "=1", "max autotune=1"])
def test_inductor_bad_syntax_refused(flag: str) -> None:
    assert repr(flag) in _refused([flag], "cpu", "inductor")


def test_inductor_empty_value_refused() -> None:
    assert "max_autotune: needs a value" in _refused(["max_autotune="], "cpu", "inductor")


@pytest.mark.parametrize(
    "name",
    ["aot_inductor.output_path", "aot_inductor.package", "aot_inductor.precompile_headers",
     "fx_graph_cache", "autotune_local_cache", "force_disable_caches", "cuda.cutlass_dir"],
)
def test_inductor_worker_controlled_option_refused(name: str) -> None:
    detail = _refused([f"{name}=x"], "cpu", "inductor")
    assert name in detail and "set by the worker" in detail


def test_inductor_conflicting_duplicate_refused() -> None:
    detail = _refused(["max_autotune=True", "max_autotune=False"], "cpu", "inductor")
    assert "max_autotune given twice with different values" in detail


def test_inductor_march_native_refused() -> None:
    detail = _refused(["cpp.march=native"], "cpu", "inductor")
    assert "cpp.march=native" in detail and "not portable" in detail


@pytest.mark.parametrize("level", ["x86-64-v5", "skylake", "armv8-a"])
def test_inductor_unknown_march_refused(level: str) -> None:
    detail = _refused([f"cpp.march={level}"], "cpu", "inductor")
    assert f"cpp.march={level}" in detail and "x86-64-v4" in detail


def test_inductor_cuda_requires_arch() -> None:
    detail = _refused(["max_autotune=True"], "cuda", "inductor")
    assert "cuda.arch" in detail and "required" in detail


@pytest.mark.parametrize("arch", ["sm90", "sm_", "hopper", "sm_090"])
def test_inductor_bad_cuda_arch_refused(arch: str) -> None:
    assert f"cuda.arch={arch}" in _refused([f"cuda.arch={arch}"], "cuda", "inductor")


def test_inductor_cuda_arch_refused_on_cpu() -> None:
    assert "only for target cuda" in _refused(["cuda.arch=sm_90"], "cpu", "inductor")


def test_inductor_march_refused_on_cuda() -> None:
    assert "only for target cpu" in _refused(["cuda.arch=sm_90", "cpp.march=x86-64"], "cuda",
                                             "inductor")
