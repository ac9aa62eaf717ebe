"""Options more than one command takes, defined once.

Every command: --json, --url, --token. `compile` and `lookup`: the ten options that build specs
(MODEL and --spec, or --format/--input/--target/--compiler/... flags), bundled as SpecArgs by the
`spec_options` decorator.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from neffcache.client.config import DEFAULT_URL
from neffcache.digests import is_digest
from neffcache.errors import UsageError

if TYPE_CHECKING:
    from neffcache.client.specs import SpecEntry

# --- every command -----------------------------------------------------------------------------
UrlOpt = Annotated[str | None, typer.Option("--url", metavar="URL", help=f"Service URL [env NEFFCACHE_URL; default "
                                               f"{DEFAULT_URL}].", show_default=False)]
TokenOpt = Annotated[str | None, typer.Option("--token", metavar="TOKEN", help="Bearer token [env NEFFCACHE_TOKEN].",
                                                 show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]

# --- several commands --------------------------------------------------------------------------
SpecOpt = Annotated[list[Path] | None, typer.Option("--spec", metavar="FILE", help="Spec file (YAML or JSON; one spec "
                                                       "or a list). Repeatable.", show_default=False)]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", metavar="NS", show_default=False)]
LimitOpt = Annotated[int, typer.Option("--limit", metavar="N", min=1, max=500)]

# --- the spec options of compile and lookup ----------------------------------------------------
_SPEC_OPTIONS: dict[str, Any] = {
    "model": Annotated[str | None, typer.Argument(metavar="MODEL", help="Model file (or sha256:<hex> digest), "
                                                     "instead of --spec.", show_default=False)],
    "spec": SpecOpt,
    "fmt": Annotated[str | None, typer.Option("--format", metavar="FORMAT", help="Model format: hlo | torch-export "
                                                 "(default: from the compiler).", show_default=False)],
    "inputs": Annotated[list[str] | None, typer.Option("--input", metavar="NAME=SHAPE:DTYPE",
                                                          help="NAME=DIMxDIM:DTYPE, e.g. x=8x64:float32. "
                                                          "Repeatable, in order.", show_default=False)],
    "target": Annotated[str | None, typer.Option("--target", metavar="TARGET",
                                                    help="trn1 trn1n inf2 trn2 trn3 cpu cuda.",
                                                    show_default=False)],
    "compiler": Annotated[str | None, typer.Option("--compiler", metavar="NAME", help="neuronx-cc | inductor "
                                                      "(default: from the target).", show_default=False)],
    "compiler_version": Annotated[str | None, typer.Option("--compiler-version", metavar="V", show_default=False)],
    "runtime_version": Annotated[str | None, typer.Option("--runtime-version", metavar="V", help="Runtime version the "
                                                             "output is for.", show_default=False)],
    "flags": Annotated[list[str] | None, typer.Option("--flag", metavar="FLAG", help="Compiler flag, e.g. --flag=-O2. "
                                                         "Repeatable.", show_default=False)],
    "namespace": NamespaceOpt,
}


@dataclass
class SpecArgs:
    """What the spec options were given (None: not given)."""

    model: str | None = None
    spec: list[Path] | None = None
    fmt: str | None = None
    inputs: list[str] | None = None
    target: str | None = None
    compiler: str | None = None
    compiler_version: str | None = None
    runtime_version: str | None = None
    flags: list[str] | None = None
    namespace: str | None = None

    def entries(self) -> list[SpecEntry]:
        """The specs to send: from --spec files, or one built from MODEL and the flags."""
        # imported when needed: see the package docstring
        from neffcache.client.specs import default_compiler, load_spec_files, normalise, parse_input

        from_flags = any(getattr(self, f.name) for f in fields(self) if f.name != "spec")
        if self.spec and from_flags:
            raise UsageError("give either --spec FILE or a MODEL with --input/--target/... flags, not both")
        if self.spec:
            return load_spec_files(self.spec)
        model = self.model
        if not model:
            raise UsageError("nothing to do: give --spec FILE, or a MODEL file with --input and --target")
        if not self.inputs:
            raise UsageError("--input NAME=DIMxDIM:DTYPE is required with a MODEL (repeat it for several inputs)")
        if not self.target:
            raise UsageError("--target is required with a MODEL (trn1, trn1n, inf2, trn2, trn3, cpu, cuda)")
        compiler = self.compiler or default_compiler(self.target)
        raw: dict[str, Any] = {
            "model": {"format": self.fmt} if self.fmt else {},
            "inputs": [parse_input(i) for i in self.inputs],
            "target": self.target,
            "compiler": {"name": compiler, "flags": list(self.flags or [])},
        }
        if self.compiler_version:
            raw["compiler"]["version"] = self.compiler_version
        if self.runtime_version:
            raw["runtime"] = {"name": "torch" if compiler == "inductor" else "neuron-runtime",
                              "version": self.runtime_version}
        if self.namespace:
            raw["namespace"] = self.namespace
        if is_digest(model):
            raw["model"]["digest"] = model
        elif model.startswith("sha256:"):
            raise UsageError(f"MODEL {model!r} is not sha256:<64 lowercase hex>")
        else:
            raw["model"]["path"] = model
        return [normalise(raw, "MODEL" if not raw["model"].get("path") else model, Path.cwd())]


def spec_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give `command(spec_args: SpecArgs, ...)` the spec options, first in its --help, and call it
    with what they were given bundled as `spec_args`."""
    own = inspect.signature(command, eval_str=True)
    rest = [p for name, p in own.parameters.items() if name != "spec_args"]
    bundle = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=annotation)
              for name, annotation in _SPEC_OPTIONS.items()]

    @functools.wraps(command)
    def with_spec_args(**given: Any) -> Any:
        spec_args = SpecArgs(**{name: given.pop(name) for name in _SPEC_OPTIONS})
        return command(spec_args=spec_args, **given)

    params = [*bundle, *rest]
    with_spec_args.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
    with_spec_args.__annotations__ = {p.name: p.annotation for p in params}
    return with_spec_args
