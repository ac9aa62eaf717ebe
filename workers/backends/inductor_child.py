"""The inductor compile itself, run in a child process by workers/backends/inductor.py:

    python -m neffcache.workers.backends.inductor_child --model M --manifest manifest.json --output out/model.pt2

A separate process so that a timeout, a cancel or a memory blowup kills only this, never the
worker. Loads the torch.export program, checks that the manifest's inputs fit the program's input
specs, sets inductor's config from the manifest (flags, isa) and writes an AOTInductor package.
Everything it prints goes to the job's compile log; a failure's last line says what went wrong.

Exit status: 0 success; 3 the manifest's inputs do not fit the exported program (the worker
classes it invalid_input); 2 the manifest asks for something impossible (flags, isa, target);
1 anything else (the traceback is in the log).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

EXIT_MISMATCH = 2
EXIT_INVALID_INPUT = 3
CUDA_HOST_MARCH = "x86-64"

# Set from the manifest itself, never from flags.
RESERVED_CONFIGS = {
    "cpp.march": "it comes from the manifest's isa",
    "cuda.arch": "it comes from the manifest's isa",
    "aot_inductor.package": "the backend always writes a package",
    "aot_inductor.output_path": "the backend chooses where the package goes",
    "aot_inductor.precompile_headers": "the backend turns it off to keep its work dir small",
}


class ManifestMismatch(Exception):
    """The model or the manifest cannot be compiled as asked: exit 2 with this message."""


class InputsMismatch(Exception):
    """The manifest's inputs do not fit the exported program: exit 3 with this message."""


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} inductor: {message}", flush=True)


def parse_flag_value(raw: str) -> Any:
    """A flag value as a Python literal ('False', '8', "'x'", '(1, 2)'), else the string itself."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def inductor_configs(manifest: dict[str, Any], known: set[str]) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    for flag in manifest["compiler"].get("flags", []):
        name, eq, raw = str(flag).partition("=")
        name = name.strip()
        if not eq or not name:
            raise ManifestMismatch(f"inductor flag {flag!r} is not of the form name=value")
        if name in RESERVED_CONFIGS:
            raise ManifestMismatch(f"inductor flag {name!r} cannot be set: {RESERVED_CONFIGS[name]}")
        if name not in known:
            raise ManifestMismatch(f"inductor flag {name!r} is not an inductor config option")
        configs[name] = parse_flag_value(raw.strip())
    target, isa = manifest["target"], manifest.get("isa")
    if target == "cpu":
        if isa:
            configs["cpp.march"] = isa
    elif target == "cuda":
        match = re.fullmatch(r"sm_(\d+)", isa or "")
        if not match:
            raise ManifestMismatch(f"cuda isa must look like sm_90, got {isa!r}")
        configs["cuda.arch"] = match.group(1)
        # The host-side wrapper runs on the serving host's CPU: build it for the baseline level,
        # never for this compile host's CPU (inductor's default is -march=native).
        configs["cpp.march"] = CUDA_HOST_MARCH
    else:
        raise ManifestMismatch(f"inductor compiles for cpu or cuda, not {target!r}")
    # Else ~280 MB of precompiled headers pile up per toolchain.
    configs["aot_inductor.precompile_headers"] = False
    return configs


def check_inputs(ep: Any, manifest_inputs: list[dict[str, Any]]) -> None:
    """The manifest's inputs must fit the exported program's input specs: as many inputs, each a
    tensor of the program's dtype and of a shape the program accepts (a static dim equal, a
    dynamic one within its range). Raises InputsMismatch naming the first input that does not.
    The dynamic dims are checked by torch's own input check, on meta tensors of the manifest's
    shapes (what calling the program with such inputs would raise)."""
    import torch
    from torch.export.graph_signature import InputKind
    from torch.utils._pytree import tree_flatten_with_path

    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder"]
    user = [(spec, node) for spec, node in zip(ep.graph_signature.input_specs, placeholders, strict=True)
            if spec.kind == InputKind.USER_INPUT]
    if len(user) != len(manifest_inputs):
        raise InputsMismatch(
            f"the manifest lists {len(manifest_inputs)} input(s) "
            f"({', '.join(str(i.get('name')) for i in manifest_inputs) or 'none'}), the exported "
            f"program takes {len(user)} ({', '.join(node.name for _, node in user) or 'none'})"
        )
    metas = []
    for index, (expected, (_, node)) in enumerate(zip(manifest_inputs, user, strict=True)):
        name = expected.get("name", f"#{index}")
        where = f"input {name!r} (#{index})"
        program = node.meta.get("val")
        if not isinstance(program, torch.Tensor):
            raise InputsMismatch(f"{where}: the exported program's input is not a tensor ({program!r})")
        want_shape = [int(d) for d in expected["shape"]]
        # Static dims as numbers, dynamic ones by their symbol (s0, s77, ...).
        have_shape = [d if isinstance(d, int) else str(d) for d in program.shape]
        if len(want_shape) != len(have_shape) or any(
            isinstance(have, int) and have != want for want, have in zip(want_shape, have_shape, strict=True)
        ):
            raise InputsMismatch(
                f"{where}: shape {want_shape} in the manifest, {have_shape} in the exported program"
            )
        have_dtype = str(program.dtype).removeprefix("torch.")
        if str(expected["dtype"]) != have_dtype:
            raise InputsMismatch(
                f"{where}: dtype {expected['dtype']} in the manifest, {have_dtype} in the exported program"
            )
        metas.append(torch.empty(want_shape, dtype=program.dtype, device="meta"))
    flat_with_path, _ = tree_flatten_with_path((tuple(metas), {}))
    try:
        ep._check_input_constraints(flat_with_path)
    except (RuntimeError, AssertionError) as exc:
        raise InputsMismatch(f"the manifest's inputs do not fit the exported program: {exc}") from exc


def compile_package(model: Path, manifest: dict[str, Any], output: Path) -> Path:
    say(f"loading torch {importlib.metadata.version('torch')} for {model.name}")
    import torch
    import torch._inductor
    import torch._inductor.config as inductor_config

    if manifest.get("model", {}).get("format") not in (None, "torch-export"):
        raise ManifestMismatch(f"inductor compiles torch-export models, not {manifest['model']['format']!r}")
    # Through a file object: given a path, torch.export.load wants it to end in ".pt2" (and
    # warns, then falls back, when it does not; the worker stores blobs without a suffix).
    with open(model, "rb") as f:
        ep = torch.export.load(f)
    check_inputs(ep, manifest.get("inputs", []))
    configs = inductor_configs(manifest, set(inductor_config.get_config_copy()))
    if manifest["target"] == "cuda":
        if not torch.cuda.is_available():
            raise ManifestMismatch("target cuda, but this host has no CUDA device")
        major, minor = torch.cuda.get_device_capability(0)
        if f"sm_{major}{minor}" != manifest.get("isa"):
            raise ManifestMismatch(f"isa {manifest.get('isa')} asked, the GPU here is sm_{major}{minor}")
        from torch.export.passes import move_to_device_pass

        ep = move_to_device_pass(ep, "cuda")
    say(f"compiling for {manifest['target']} {manifest.get('isa')} with {configs}")
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    path = torch._inductor.aoti_compile_and_package(
        ep, package_path=str(output), inductor_configs=configs
    )
    say(f"wrote {path} ({Path(path).stat().st_size} bytes) in {time.monotonic() - started:.1f} s")
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="inductor_child", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    try:
        compile_package(args.model, manifest, args.output)
    except ManifestMismatch as exc:
        print(f"error: {exc}", flush=True)
        return EXIT_MISMATCH
    except InputsMismatch as exc:
        print(f"error: {exc}", flush=True)
        return EXIT_INVALID_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
