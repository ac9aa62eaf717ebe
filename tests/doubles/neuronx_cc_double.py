#!/usr/bin/env python3
"""TEST DOUBLE of the `neuronx-cc` command line. Not a compiler; never offered as a backend.

The real neuronx-cc is proprietary and installs only from the Neuron package repository, so our
wrapper (workers/backends/neuronx_cc.py) is tested against this stand-in. It implements the
documented contract of the CLI (AWS "Neuron Compiler CLI Reference Guide") and nothing more:

    neuronx-cc --version
    neuronx-cc compile <model_file> --framework XLA --target <instance_family> --output <file>
                       [--model-type M] [--auto-cast C] [--auto-cast-type T] [--optlevel N | -O N]
                       [--logical-nc-config N | -lnc N] [--distribution-strategy S]
                       [--verbose L] [--logfile F] [--enable-...] [other --options]

`--opt=value` and `--opt value` are both accepted. Values of the documented enumerated options are
checked and a bad one exits 1 with an argparse-style message; other `--options` are accepted
(the real compiler has many undocumented ones) and recorded in the output.

On success it writes a NEFF at --output: the 1024-byte little-endian header laid out as AWS's
"work with NEFF files" page describes (see `build_neff`), then a gzip tarball holding
`neff.json` (what was compiled, how) and `sg00/program.bin` (derived from the input bytes, so
different inputs give different NEFFs; the same input and options give the same bytes). Like the
real compiler it writes its log to stdout and to --logfile (default `log-neuron-cc.txt` in cwd).

Behaviour is chosen by the INPUT FILE's content, so each job can ask for its own:
    double:fail            print an error log and exit 70
    double:hang            start a sleeping helper process, then sleep forever
    double:kill            SIGKILL itself (what the kernel's OOM killer does)
    double:truncated       write a NEFF whose header promises more data than follows
    double:inconsistent    write a complete NEFF whose header_size says 10 bytes
    double:notar           write a NEFF whose payload is not a tarball
    double:future          write a NEFF of format version 3.0
    double:sleep=<secs>    sleep that long (logging a progress line each second), then succeed

Environment:
    NEURONX_CC_DOUBLE_VERSION  the version `--version` reports (default 2.27.5334.0+2d6a2ba2b)
    NEURONX_CC_DOUBLE_RECORD   a file to which each invocation's argv is appended as a JSON line;
                               each `compile` also appends the sha256 of its input file to
                               `<that file>.inputs`, so a test can count compiles of one model

Standard library only, so the wrapper script can run it with any python3.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import tarfile
import time

DEFAULT_VERSION = "2.27.5334.0+2d6a2ba2b"

TARGETS = ("trn1", "trn1n", "inf2", "trn2", "trn3")

# Documented options that take a value, with their valid values (None: any value).
VALUE_OPTIONS: dict[str, tuple[str, ...] | None] = {
    "--framework": ("XLA",),
    "--target": TARGETS,
    "--output": None,
    "--logfile": None,
    "--model-type": ("generic", "transformer", "unet-inference", "cnn-training"),
    # "matmult" is the current spelling; older guides wrote "matmul".
    "--auto-cast": ("none", "matmult", "matmul", "all"),
    "--auto-cast-type": ("bf16", "fp16", "tf32", "fp8_e4m3"),
    "--optlevel": ("1", "2", "3"),
    "--logical-nc-config": ("1", "2"),
    "--distribution-strategy": ("llm-training", "nemo", "NEMO"),
    "--native-int64": ("default", "enabled", "disabled"),
    "--implicit-integer-downcast": None,
    "--verbose": ("debug", "info", "warning", "error", "critical"),
    "--neuroncore-pipeline-cores": None,
}
ALIASES = {"-O": "--optlevel", "-lnc": "--logical-nc-config", "--lnc": "--logical-nc-config"}

# ---------------------------------------------------------------------------------------------
# NEFF header, as laid out in AWS's "work with NEFF files" page (little-endian, 1024 bytes):
#   pkg_version u64 @0x000, header_size u64 @0x008, data_size u64 @0x010,
#   neff_version_major u64 @0x018, neff_version_minor u64 @0x020, neff_build_version 128s @0x028,
#   num_tpb u32 @0x0A8, hash 32s @0x0AC, uuid 16s @0x0CC, name 256s @0x0DC,
#   requested_tpb_count u32 @0x1DC, tpb_per_node 64s @0x1E0, feature_bits u64 @0x220,
#   lnc_size u32 @0x228; the rest is zero.
NEFF_HEADER_SIZE = 1024
NEFF_HEADER_FORMAT = "<QQQQQ128sI32s16s256sI64sQI"
NEFF_HEADER_FIELDS = (
    "pkg_version",
    "header_size",
    "data_size",
    "neff_version_major",
    "neff_version_minor",
    "neff_build_version",
    "num_tpb",
    "hash",
    "uuid",
    "name",
    "requested_tpb_count",
    "tpb_per_node",
    "feature_bits",
    "lnc_size",
)


def build_payload(payload_files: dict[str, bytes]) -> bytes:
    """A deterministic gzip tarball of the files (sorted, zero mtimes, no owner names)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(payload_files):
            data = payload_files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def build_neff(payload_files: dict[str, bytes], **fields: object) -> bytes:
    """A NEFF: the 1024-byte header, then a gzip tarball of payload_files.

    Any header field can be given by name (see NEFF_HEADER_FIELDS); byte fields take bytes or
    str. data_size and hash default to the payload's length and sha256; uuid to bytes derived
    from the hash (so equal inputs give equal NEFFs).
    """
    unknown = set(fields) - set(NEFF_HEADER_FIELDS)
    if unknown:
        raise TypeError(f"unknown NEFF header fields: {sorted(unknown)}")
    payload = build_payload(payload_files)
    digest = hashlib.sha256(payload).digest()
    values: dict[str, object] = {
        "pkg_version": 1,
        "header_size": NEFF_HEADER_SIZE,
        "data_size": len(payload),
        "neff_version_major": 2,
        "neff_version_minor": 0,
        "neff_build_version": DEFAULT_VERSION,
        "num_tpb": 1,
        "hash": digest,
        "uuid": hashlib.sha256(b"uuid:" + digest).digest()[:16],
        "name": "model",
        "requested_tpb_count": 1,
        "tpb_per_node": b"",
        "feature_bits": 0,
        "lnc_size": 1,
    }
    values.update(fields)
    packed = [
        v.encode() if isinstance(v, str) else v for v in (values[f] for f in NEFF_HEADER_FIELDS)
    ]
    header = struct.pack(NEFF_HEADER_FORMAT, *packed)
    return header.ljust(NEFF_HEADER_SIZE, b"\0") + payload


# ---------------------------------------------------------------------------------------------


class UsageError(Exception):
    pass


def parse_compile_args(args: list[str]) -> tuple[str, dict[str, str], list[str]]:
    """(input file, {option: value}, [flags without a value]), argparse-style errors raised."""
    inputs: list[str] = []
    options: dict[str, str] = {}
    flags: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            inputs.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if not eq and name.startswith("-O") and name not in ALIASES and len(name) > 2:
            name, eq, value = "-O", "=", name[2:]  # -O2
        name = ALIASES.get(name, name)
        if name in VALUE_OPTIONS:
            if not eq:
                if i >= len(args):
                    raise UsageError(f"argument {name}: expected one argument")
                value = args[i]
                i += 1
            choices = VALUE_OPTIONS[name]
            if choices is not None and value not in choices:
                shown = ", ".join(repr(c) for c in choices)
                raise UsageError(f"argument {name}: invalid choice: {value!r} (choose from {shown})")
            options[name] = value
        elif eq:
            options[name] = value  # an option this double does not know: accepted, recorded
        else:
            flags.append(name)
    if not inputs:
        raise UsageError("the following arguments are required: model_files")
    if len(inputs) > 1:
        raise UsageError(f"unrecognized arguments: {' '.join(inputs[1:])}")
    for required in ("--framework", "--target", "--output"):
        if required not in options:
            raise UsageError(f"the following arguments are required: {required}")
    return inputs[0], options, flags


def usage_error(message: str) -> int:
    sys.stderr.write(
        "usage: neuronx-cc compile <model_files> --framework <framework_name> "
        "--target <instance_family> [options] --output <filename>\n"
    )
    sys.stderr.write(f"neuronx-cc compile: error: {message}\n")
    return 1


class Log:
    def __init__(self, logfile: str | None) -> None:
        self.file = open(logfile, "a", encoding="utf-8") if logfile else None

    def __call__(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        text = f"{stamp} {line}"
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()


def compile_command(args: list[str], version: str) -> int:
    try:
        input_path, options, flags = parse_compile_args(args)
    except UsageError as exc:
        return usage_error(str(exc))
    if not os.path.isfile(input_path):
        return usage_error(f"model file not found: {input_path}")
    log = Log(options.get("--logfile", "log-neuron-cc.txt"))
    with open(input_path, "rb") as f:
        data = f.read()
    target = options["--target"]
    lnc = int(options.get("--logical-nc-config", "1"))
    log(f"INFO: neuronx-cc (test double) {version} pid {os.getpid()}")
    log(f"INFO: compiling {input_path} ({len(data)} bytes) for {target}")

    if b"double:fail" in data:
        log("INFO: Running HLO verifier")
        log("ERROR: [NCC_EVRF009] operator 'custom-call' is not supported (test double)")
        log("ERROR: compilation of the graph stopped")
        log("ERROR 70: compilation failed (requested by test double)")
        return 70
    if b"double:hang" in data:
        helper = subprocess.Popen(["sleep", "3600"])
        log(f"INFO: helper pid {helper.pid}; hanging (requested by test double)")
        while True:
            time.sleep(3600)
    if b"double:kill" in data:
        log("INFO: killing myself with SIGKILL (requested by test double)")
        os.kill(os.getpid(), signal.SIGKILL)
    match = re.search(rb"double:sleep=([0-9]+(?:\.[0-9]*)?)", data)
    if match:
        seconds = float(match.group(1))
        log(f"INFO: sleeping {seconds:g} s (requested by test double)")
        deadline = time.monotonic() + seconds
        step = 0
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(1.0, left))
            step += 1
            log(f"INFO: compiling, step {step} of {int(seconds + 0.999)}")

    description = {
        "compiler": "neuronx-cc test double",
        "compiler_version": version,
        "input": {
            "name": os.path.basename(input_path),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
        "framework": options["--framework"],
        "target": target,
        "options": {k: v for k, v in sorted(options.items()) if k not in ("--output", "--logfile")},
        "flags": flags,
    }
    program = hashlib.sha512(b"program:" + data).digest() * 4 + data[:4096][::-1]
    broken: dict[str, object] = {}
    if b"double:inconsistent" in data:
        broken["header_size"] = 10
    if b"double:future" in data:
        broken["neff_version_major"] = 3
    neff = build_neff(
        {
            "neff.json": json.dumps(description, indent=2, sort_keys=True).encode(),
            "sg00/program.bin": program,
        },
        neff_build_version=version,
        name=os.path.basename(input_path).split(".")[0][:255],
        lnc_size=lnc,
        requested_tpb_count=lnc,
        **broken,
    )
    if b"double:notar" in data:
        junk = hashlib.sha512(data).digest() * 8
        neff = neff[:0x10] + len(junk).to_bytes(8, "little") + neff[0x18:NEFF_HEADER_SIZE] + junk
    if b"double:truncated" in data:
        neff = neff[: NEFF_HEADER_SIZE + (len(neff) - NEFF_HEADER_SIZE) // 2]
        log("WARNING: writing a truncated NEFF (requested by test double)")
    output = options["--output"]
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "wb") as f:
        f.write(neff)
    log(f"INFO: wrote {output} ({len(neff)} bytes)")
    log("Compiler status PASS")
    return 0


def main(argv: list[str]) -> int:
    record = os.environ.get("NEURONX_CC_DOUBLE_RECORD")
    if record:
        with open(record, "a", encoding="utf-8") as f:
            f.write(json.dumps(argv) + "\n")
        if len(argv) > 1 and argv[0] == "compile" and os.path.isfile(argv[1]):
            with open(argv[1], "rb") as model, open(record + ".inputs", "a", encoding="utf-8") as f:
                f.write(hashlib.sha256(model.read()).hexdigest() + "\n")
    version = os.environ.get("NEURONX_CC_DOUBLE_VERSION", DEFAULT_VERSION)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: neuronx-cc <command> [parameters]\ncommands: compile, list-operators")
        return 0 if argv else 1
    if argv[0] == "--version":
        print(f"NeuronX Compiler version {version}")
        print("")
        print(f"Python version {sys.version.split()[0]} (test double)")
        return 0
    if argv[0] == "compile":
        return compile_command(argv[1:], version)
    if argv[0] == "list-operators":
        print("Abs\nAdd\nConvolution\nDot\nMaximum\nMultiply\nReshape\nTranspose")
        return 0
    return usage_error(f"argument command: invalid choice: {argv[0]!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
