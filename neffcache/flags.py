"""Compiler flag canonicalisation: one spelling per meaning, nothing that does not change output.

Two specs that ask for the same compilation must get the same cache key, so the flag list that
goes into the key manifest is canonical: equivalent spellings collapse to one form, flags that
only change where logs and scratch files go are dropped, and bad values are refused here rather
than after a 30-minute compile. Pure: no I/O, standard library only.

neuronx-cc (documented command line, Neuron SDK "Neuron Compiler CLI Reference Guide"):

    neuronx-cc compile <model> --framework XLA --target <t> --output <file> [options]

Known options come out as ``--long-name=value`` (or ``--long-name`` for switches), sorted by
name; options we do not know are kept verbatim, in their order, after the known ones, because
we cannot tell whether their order or spelling matters. Option defaults are NOT filled in or
removed: defaults change between compiler releases (``--auto-cast`` moved from ``matmult`` to
``none``), so an explicit ``--optlevel=2`` and no ``--optlevel`` are kept apart.

inductor (its rules are in neffcache/flags_inductor.py): flags are inductor config assignments
``name=value`` (``max_autotune=True``). The CPU ISA level (``cpp.march``) and the CUDA
architecture (``cuda.arch``) are not kept in the flag list: they are returned as the ``isa`` and
recorded in the manifest on their own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from neffcache.errors import InvalidFlags, InvalidSpec
from neffcache.flags_common import FIELD, CanonicalFlags, check_tokens, one_of
from neffcache.flags_inductor import canonical_inductor, isa_flag
from neffcache.toolchain import NEURON_TARGETS

NEURONX_CC = "neuronx-cc"
INDUCTOR = "inductor"
# torch_neuronx.trace passes its `compiler_args` to neuronx-cc: the same rules, the same key.
TORCH_NEURONX = "torch-neuronx"

# --- entry points -----------------------------------------------------------------------------
def canonical_flags_and_isa(
    compiler_name: str, flags: Sequence[str], target: str
) -> CanonicalFlags:
    """Canonicalise `flags` for `compiler_name` compiling for `target`; split off the ISA.

    neuronx-cc and torch-neuronx (whose flags are neuronx-cc's `compiler_args`): isa is None.
    inductor: isa is the `cpp.march` level (DEFAULT_CPU_ISA when not
    given) for target cpu, the `cuda.arch` as "sm_<digits>" for target cuda; either way the
    flag is removed from the list. Raises InvalidFlags naming the offending flag.
    """
    if compiler_name in (NEURONX_CC, TORCH_NEURONX):
        return CanonicalFlags(None, canonical_neuronx_cc_flags(flags, target))
    if compiler_name == INDUCTOR:
        return canonical_inductor(flags, target)
    raise InvalidFlags(
        f"compiler.name: {compiler_name!r}: no flag rules for this compiler "
        f"(known: {NEURONX_CC}, {INDUCTOR}, {TORCH_NEURONX})"
    )


def isa_flags(compiler_name: str, target: str, isa: str | None) -> list[str]:
    """The flags canonical_flags_and_isa splits off as `isa`, given back: for inductor the
    `cpp.march` or `cuda.arch` assignment; none for neuronx-cc and torch-neuronx (isa None)."""
    if compiler_name != INDUCTOR or isa is None:
        return []
    return [isa_flag(target, isa)]


def canonical_flags(compiler_name: str, flags: Sequence[str], target: str) -> list[str]:
    """The canonical flag list alone (for inductor, without the ISA flag)."""
    return canonical_flags_and_isa(compiler_name, flags, target).flags


def canonical_inductor_flags(flags: Sequence[str], target: str) -> list[str]:
    """Canonical inductor config assignments, without `cpp.march` / `cuda.arch` (see isa)."""
    return canonical_inductor(flags, target).flags


# --- neuronx-cc -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _NeuronOption:
    name: str  # canonical spelling, always the long form
    aliases: tuple[str, ...]  # other accepted spellings
    takes_value: bool
    # accepted value -> canonical value; None with takes_value means `normalise` decides
    values: Mapping[str, str] | None = None
    normalise: Callable[[str], str | None] | None = None  # returns None for an invalid value
    allowed: str = ""  # words for the error message when `normalise` refuses
    targets: tuple[str, ...] | None = None  # None: every neuron target


def _identity_values(*values: str) -> dict[str, str]:
    return {value: value for value in values}


_DOWNCAST_OPS = ("all_reduce", "dot", "pow", "reduce_scatter", "scatter")


def _implicit_integer_downcast(value: str) -> str | None:
    if value in ("default", "all", "none"):
        return value
    ops = value.split(",")
    if not all(op in _DOWNCAST_OPS for op in ops):
        return None
    # A set of operations: order and repeats in the list do not change what is permitted.
    return ",".join(sorted(set(ops)))


_NEURON_OPTIONS: tuple[_NeuronOption, ...] = (
    _NeuronOption("--optlevel", ("-O",), True, _identity_values("1", "2", "3")),
    _NeuronOption("--auto-cast", (), True, _identity_values("none", "matmult", "all")),
    _NeuronOption(
        "--auto-cast-type", (), True, _identity_values("bf16", "fp16", "tf32", "fp8_e4m3")
    ),
    _NeuronOption(
        "--model-type",
        (),
        True,
        # cnn-training is not in the current reference page but is accepted by released
        # compilers and used in AWS samples (trn1 and trn2), so it must not be refused.
        _identity_values("generic", "transformer", "unet-inference", "cnn-training"),
    ),
    _NeuronOption(
        "--distribution-strategy",
        (),
        True,
        # The reference guide says llm-training "is equivalent to the previously documented
        # option argument value of NEMO", which is being deprecated: one key for both.
        {"llm-training": "llm-training", "nemo": "llm-training", "NEMO": "llm-training"},
    ),
    _NeuronOption(
        "--logical-nc-config",
        ("-lnc", "--lnc"),
        True,
        _identity_values("1", "2"),
        targets=("trn2", "trn3"),
    ),
    _NeuronOption(
        "--native-int64",
        (),
        True,
        _identity_values("default", "enabled", "disabled"),
        targets=("trn2", "trn3"),
    ),
    _NeuronOption(
        "--implicit-integer-downcast",
        (),
        True,
        normalise=_implicit_integer_downcast,
        allowed="default, all, none, or a comma-separated list of " + one_of(_DOWNCAST_OPS),
    ),
    _NeuronOption("--enable-mixed-precision-accumulation", (), False),
    _NeuronOption("--disable-mixed-precision-accumulation", (), False),
    _NeuronOption("--enable-saturate-infinity", (), False),
    _NeuronOption("--enable-fast-context-switch", (), False),
    _NeuronOption("--enable-fast-loading-neuron-binaries", (), False),
)

# Pairs that contradict each other: both given is refused rather than letting order decide.
_NEURON_CONFLICTS = (
    ("--enable-mixed-precision-accumulation", "--disable-mixed-precision-accumulation"),
)

_REQUIRED, _OPTIONAL, _NONE = "required", "optional", "none"

# Options that change where things are written or how much is logged, never the NEFF. The
# worker chooses output, log and scratch locations itself. `--cache_dir` and
# `--retry_failed_compilation` are libneuronxla's (NEURON_CC_FLAGS) persistent-cache options,
# often pasted along with real compiler flags; `--compile_workdir` is its work folder.
_NEURON_DROPPED: dict[str, str] = {
    "--output": _REQUIRED,
    "--logfile": _REQUIRED,
    "--logfile-verbose": _REQUIRED,
    "--verbose": _OPTIONAL,
    "--workdir": _REQUIRED,
    "--compile_workdir": _REQUIRED,
    "--compile-workdir": _REQUIRED,
    "--cache_dir": _REQUIRED,
    "--cache-dir": _REQUIRED,
    "--temp-dir": _REQUIRED,
    "--tmpdir": _REQUIRED,
    "--retry_failed_compilation": _NONE,
}

_BY_SPELLING: dict[str, _NeuronOption] = {}
for _option in _NEURON_OPTIONS:
    for _spelling in (_option.name, *_option.aliases):
        _BY_SPELLING[_spelling] = _option

_KNOWN_SPELLINGS = frozenset(_BY_SPELLING) | frozenset(_NEURON_DROPPED) | {
    "--target",
    "--framework",
}

NEURONX_CC_KNOWN_OPTIONS: tuple[str, ...] = tuple(sorted(o.name for o in _NEURON_OPTIONS))
NEURONX_CC_DROPPED_OPTIONS: tuple[str, ...] = tuple(
    sorted([*_NEURON_DROPPED, "--framework", "--target"])
)


def _is_option(token: str) -> bool:
    return token.startswith("-")


def _split_option(token: str) -> tuple[str, str | None]:
    """`--name=value` -> ("--name", "value"); `-O2` -> ("-O", "2"); `--name` -> ("--name", None)."""
    if token.startswith("-O") and not token.startswith("--") and token != "-O":
        return "-O", token[2:].removeprefix("=")
    spelled, sep, attached = token.partition("=")
    return spelled, (attached if sep else None)


def canonical_neuronx_cc_flags(flags: Sequence[str], target: str) -> list[str]:
    """Canonical neuronx-cc flags for `target` (see the module docstring for the rules)."""
    check_tokens(flags)
    if target not in NEURON_TARGETS:
        raise InvalidSpec(
            f"target: neuronx-cc compiles for {one_of(NEURON_TARGETS)}, not {target!r}"
        )

    chosen: dict[str, tuple[str | None, str]] = {}  # canonical name -> (value, as written)
    unknown: list[str] = []
    index = 0
    while index < len(flags):
        token = flags[index]
        index += 1
        if token in ("-", "--"):
            # "--" ends option parsing: what follows would become extra model files.
            raise InvalidFlags(f"{FIELD}: {token!r}: not an option")
        if not _is_option(token):
            raise InvalidFlags(
                f"{FIELD}: {token!r}: not an option and follows no option that takes a value "
                "(the model file is passed by the worker)"
            )
        spelled, attached = _split_option(token)
        if any(ch.isspace() for ch in spelled):
            head = spelled.split()[0]
            if head in _KNOWN_SPELLINGS:
                raise InvalidFlags(
                    f"{FIELD}: {token!r}: one argument per list element "
                    f"(write {head!r}, 'value' or '{head}=value')"
                )

        if spelled not in _KNOWN_SPELLINGS:
            # Unknown: keep it and the words that follow it exactly as given, in order.
            unknown.append(token)
            while index < len(flags) and not _is_option(flags[index]):
                unknown.append(flags[index])
                index += 1
            continue

        option = _BY_SPELLING.get(spelled)
        takes = (
            (_REQUIRED if option.takes_value else _NONE)
            if option is not None
            else _NEURON_DROPPED.get(spelled, _REQUIRED)  # --target, --framework take one
        )
        if takes == _NONE:
            if attached is not None:
                raise InvalidFlags(f"{FIELD}: {token}: {spelled} takes no value")
            value, written = None, token
        else:
            value = attached
            if value is None and index < len(flags) and not _is_option(flags[index]):
                value = flags[index]
                index += 1
            if value is None or value == "":
                if takes == _OPTIONAL:
                    value = None
                else:
                    raise InvalidFlags(f"{FIELD}: {spelled}: needs a value{_hint(option)}")
            written = token if attached is not None or value is None else f"{spelled} {value}"

        if option is None:
            _check_dropped(spelled, value, written, target)
            continue

        if option.targets is not None and target not in option.targets:
            raise InvalidFlags(
                f"{FIELD}: {written}: only for targets {one_of(option.targets)}, "
                f"not target {target}"
            )
        if value is not None:
            value = _neuron_value(option, value, written)
        previous = chosen.get(option.name)
        if previous is not None and previous[0] != value:
            raise InvalidFlags(
                f"{FIELD}: {option.name} given twice with different values "
                f"({previous[1]} and {written})"
            )
        chosen[option.name] = (value, written)

    for first, second in _NEURON_CONFLICTS:
        if first in chosen and second in chosen:
            raise InvalidFlags(f"{FIELD}: {first} and {second} contradict each other")

    # Sorted by option name, so "--auto-cast" comes before "--auto-cast-type".
    known = [
        name if value is None else f"{name}={value}"
        for name, (value, _) in sorted(chosen.items(), key=lambda item: item[0])
    ]
    return known + unknown


def _hint(option: _NeuronOption | None) -> str:
    if option is None:
        return ""
    allowed = one_of(list(option.values)) if option.values is not None else option.allowed
    return f" (one of {allowed})"


def _neuron_value(option: _NeuronOption, value: str, written: str) -> str:
    if option.values is not None:
        canonical = option.values.get(value)
        allowed = one_of(list(option.values))
    else:
        assert option.normalise is not None
        canonical = option.normalise(value)
        allowed = option.allowed
    if canonical is None:
        raise InvalidFlags(f"{FIELD}: {written}: must be one of {allowed}")
    return canonical


def _check_dropped(spelled: str, value: str | None, written: str, target: str) -> None:
    """Dropped options carry no meaning for the key, but two of them can contradict the spec."""
    if spelled == "--target":
        if value != target:
            raise InvalidFlags(f"{FIELD}: --target={value} disagrees with target {target}")
    elif spelled == "--framework":
        # The worker always passes --framework XLA because the model format is HLO.
        if value is None or value.upper() != "XLA":
            raise InvalidFlags(f"{FIELD}: {written}: must be XLA (the model is an HLO module)")
