"""The neuronx-cc backend against the neuronx-cc test double (no service, no queue)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import stat
import struct
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from neffcache.settings import Settings
from neffcache.workers.backends.base import BackendUnavailable, Toolchain
from neffcache.workers.backends.inductor import InductorBackend
from neffcache.workers.backends.neuronx_cc import NeuronxCcBackend, parse_compiler_version
from neffcache.workers.backends.process import RUN_MARKER, ProcessResult, classify
from neffcache.workers.backends.registry import load_backend
from tests.support.stack import REPO

DOUBLE_BIN = REPO / "tests" / "doubles" / "bin"
DEFAULT_DOUBLE_VERSION = "2.27.5334.0+2d6a2ba2b"
RUNTIME = "2.34.10.0"
FLAGS = ["--auto-cast=none", "--enable-saturate-infinity", "--logical-nc-config=2", "--optlevel=2"]


# --- helpers ---------------------------------------------------------------------------------
def read_neff_header(data: bytes) -> dict[str, object]:
    """The NEFF header by the offsets in DESIGN.md ("NEFF facts"), read independently of the double."""
    assert len(data) >= 1024, "shorter than a NEFF header"
    u64 = lambda off: struct.unpack_from("<Q", data, off)[0]  # noqa: E731
    u32 = lambda off: struct.unpack_from("<I", data, off)[0]  # noqa: E731
    return {
        "pkg_version": u64(0x000),
        "header_size": u64(0x008),
        "data_size": u64(0x010),
        "neff_version_major": u64(0x018),
        "neff_version_minor": u64(0x020),
        "neff_build_version": data[0x028:0x0A8].rstrip(b"\0").decode(),
        "num_tpb": u32(0x0A8),
        "hash": data[0x0AC:0x0CC],
        "uuid": data[0x0CC:0x0DC],
        "name": data[0x0DC:0x1DC].rstrip(b"\0").decode(),
        "requested_tpb_count": u32(0x1DC),
        "feature_bits": u64(0x220),
        "lnc_size": u32(0x228),
    }


def manifest(target: str = "trn2", flags: list[str] | None = None, fmt: str = "hlo") -> dict:
    return {
        "key_version": 1,
        "namespace": "default",
        "model": {"format": fmt, "digest": "sha256:" + "0" * 64},
        "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64"}],
        "target": target,
        "isa": None,
        "compiler": {
            "name": "neuronx-cc", "version": DEFAULT_DOUBLE_VERSION, "flags": list(FLAGS if flags is None else flags),
        },
        "runtime": {"name": "neuron-runtime", "version": RUNTIME},
        "allow_toolchain_mismatch": False,
    }


def never() -> bool:
    return False


def live_pids_in_group(pgid: int) -> list[int]:
    """Processes (not zombies) whose process group is pgid."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            found.append(int(entry))
    return found


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.fixture
def double(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The test double first on PATH, run by this interpreter; returns its argv record file."""
    record = tmp_path / "double-argv.jsonl"
    monkeypatch.setenv("PATH", f"{DOUBLE_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("NEURONX_CC_DOUBLE_PYTHON", sys.executable)
    monkeypatch.setenv("NEURONX_CC_DOUBLE_RECORD", str(record))
    monkeypatch.delenv("NEURONX_CC_DOUBLE_VERSION", raising=False)
    return record


@pytest.fixture
def backend(double: Path) -> NeuronxCcBackend:
    return NeuronxCcBackend(Settings(worker_backend="neuronx-cc", worker_runtime_version=RUNTIME))


def hlo(tmp_path: Path, *directives: str, name: str = "model") -> Path:
    path = tmp_path / name
    header = f"HloModule {name}\n{hashlib.sha256(name.encode()).hexdigest()}\n"
    path.write_bytes(header.encode() + "\n".join(directives).encode())
    return path


def compile_argvs(record: Path) -> list[list[str]]:
    return [a for a in map(json.loads, record.read_text().splitlines()) if a[:1] == ["compile"]]


def make_script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


# --- detect ----------------------------------------------------------------------------------
def test_detect_reports_the_version_the_binary_prints(
    backend: NeuronxCcBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEURONX_CC_DOUBLE_VERSION", "2.99.4242.7+abc0123de")
    toolchain = backend.detect()
    assert toolchain == Toolchain(
        compiler_name="neuronx-cc",
        compiler_version="2.99.4242.7+abc0123de",
        runtime_name="neuron-runtime",
        runtime_version=RUNTIME,
        targets=("trn1", "trn1n", "inf2", "trn2", "trn3"),
        isas=(),
    )
    assert toolchain.as_dict() == {
        "compiler_name": "neuronx-cc",
        "compiler_version": "2.99.4242.7+abc0123de",
        "runtime_name": "neuron-runtime",
        "runtime_version": RUNTIME,
        "targets": ["trn1", "trn1n", "inf2", "trn2", "trn3"],
        "isas": [],
    }
    assert Toolchain.from_dict(toolchain.as_dict()) == toolchain
    monkeypatch.delenv("NEURONX_CC_DOUBLE_VERSION")
    assert backend.detect().compiler_version == DEFAULT_DOUBLE_VERSION


def test_detect_without_the_binary_says_how_to_fix_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no neuronx-cc anywhere
    with pytest.raises(BackendUnavailable, match="not on PATH.*NEFFCACHE_NEURONX_CC_PATH"):
        NeuronxCcBackend(Settings(worker_runtime_version=RUNTIME)).detect()
    missing = str(tmp_path / "opt" / "neuronx-cc")
    with pytest.raises(RuntimeError, match="does not exist or is not executable"):
        NeuronxCcBackend(Settings(neuronx_cc_path=missing, worker_runtime_version=RUNTIME)).detect()


def test_detect_refuses_output_it_cannot_parse(tmp_path: Path) -> None:
    script = make_script(tmp_path / "neuronx-cc", 'echo "neuronx-cc, some build"; echo "(c) Amazon"')
    with pytest.raises(BackendUnavailable, match="cannot read the compiler version.*some build"):
        NeuronxCcBackend(Settings(neuronx_cc_path=str(script), worker_runtime_version=RUNTIME)).detect()
    failing = make_script(tmp_path / "broken-cc", 'echo "ImportError: libneuronxla" >&2; exit 3')
    with pytest.raises(BackendUnavailable, match="exited with 3: ImportError: libneuronxla"):
        NeuronxCcBackend(Settings(neuronx_cc_path=str(failing), worker_runtime_version=RUNTIME)).detect()


def test_parse_compiler_version() -> None:
    out = "NeuronX Compiler version 2.27.5334.0+2d6a2ba2b\n\nPython version 3.10.12\nHWM version 2.27\n"
    assert parse_compiler_version(out) == "2.27.5334.0+2d6a2ba2b"
    # A warning some installs print first is skipped.
    assert parse_compiler_version("WARNING: x\nNeuronX Compiler version 2.5.0.28+1be23f232 \n") == "2.5.0.28+1be23f232"
    with pytest.raises(BackendUnavailable):
        parse_compiler_version("NeuronX Compiler version\n")
    with pytest.raises(BackendUnavailable):
        parse_compiler_version("")


def test_runtime_version_from_settings_else_dpkg_else_a_clear_error(
    double: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert NeuronxCcBackend(Settings(worker_runtime_version=" 2.34.10.0 ")).detect().runtime_version == "2.34.10.0"

    # No dpkg-query at all (PATH holds only the double).
    monkeypatch.setenv("PATH", str(DOUBLE_BIN))
    with pytest.raises(BackendUnavailable, match="NEFFCACHE_WORKER_RUNTIME_VERSION"):
        NeuronxCcBackend(Settings(worker_runtime_version=None)).detect()

    # dpkg-query that does not know the package (exit 1, as dpkg does).
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    make_script(fake_bin / "dpkg-query", 'echo "dpkg-query: no packages found matching $3" >&2; exit 1')
    monkeypatch.setenv("PATH", f"{DOUBLE_BIN}{os.pathsep}{fake_bin}")
    with pytest.raises(BackendUnavailable, match="not installed.*NEFFCACHE_WORKER_RUNTIME_VERSION"):
        NeuronxCcBackend(Settings(worker_runtime_version=None)).detect()

    # dpkg-query that has it: the Debian revision is dropped.
    make_script(
        fake_bin / "dpkg-query",
        '[ "$1 $2 $3" = "-W -f=\\${Version} aws-neuronx-runtime-lib" ] || exit 9; printf "2.34.10.0-5a8c1f2b3"',
    )
    assert NeuronxCcBackend(Settings(worker_runtime_version=None)).detect().runtime_version == "2.34.10.0"


@pytest.mark.parametrize(("name", "cls"), [("neuronx-cc", NeuronxCcBackend), ("inductor", InductorBackend),
                                           ("neuronx_cc", NeuronxCcBackend), (" NeuronxCC ", NeuronxCcBackend)])
def test_load_backend_picks_by_setting(name: str, cls: type) -> None:
    assert type(load_backend(Settings(worker_backend=name))) is cls


def test_load_backend_refuses_an_unknown_name_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="NEFFCACHE_WORKER_BACKEND to 'inductor' or 'neuronx-cc'"):
        load_backend(Settings(worker_backend="neuron-cc"))


# --- compile ---------------------------------------------------------------------------------
def test_compile_runs_the_documented_command_and_writes_a_neff(
    backend: NeuronxCcBackend, double: Path, tmp_path: Path
) -> None:
    model = hlo(tmp_path)
    work = tmp_path / "work"
    outcome = backend.compile(manifest(flags=FLAGS), model, work, 60, never)
    assert outcome.ok, outcome.message
    assert outcome.failure_class is None
    neff = work.resolve() / "out" / "model.neff"
    assert outcome.files == {"model.neff": neff}
    assert outcome.log_path == work.resolve() / "compile.log"
    assert "Compiler status PASS" in outcome.log_path.read_text()
    assert 0 < outcome.seconds < 30

    [argv] = compile_argvs(double)
    assert argv == [
        "compile", "model.hlo.pb", "--framework", "XLA", "--target", "trn2", "--output", str(neff), *FLAGS,
    ]
    # The input was copied in, not moved: the caller's file is untouched.
    assert (work / "model.hlo.pb").read_bytes() == model.read_bytes()

    data = neff.read_bytes()
    header = read_neff_header(data)
    payload = data[1024:]
    assert header["header_size"] == 1024
    assert header["data_size"] == len(payload)
    assert header["hash"] == hashlib.sha256(payload).digest()
    assert (header["neff_version_major"], header["neff_version_minor"]) == (2, 0)
    assert header["neff_build_version"] == DEFAULT_DOUBLE_VERSION
    assert header["lnc_size"] == 2  # from --logical-nc-config=2
    assert header["name"] == "model"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(payload))) as tar:
        names = set(tar.getnames())
        described = json.load(tar.extractfile("neff.json"))  # type: ignore[arg-type]
    assert names == {"neff.json", "sg00/program.bin"}
    assert described["target"] == "trn2"
    assert described["input"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()


def test_same_input_same_neff_different_input_different_neff(backend: NeuronxCcBackend, tmp_path: Path) -> None:
    a, b = hlo(tmp_path, name="a"), hlo(tmp_path, name="b")
    neffs = []
    for i, model in enumerate((a, a, b)):
        outcome = backend.compile(manifest(target="inf2", flags=["--optlevel=1"]), model, tmp_path / f"w{i}", 60, never)
        assert outcome.ok, outcome.message
        neffs.append(outcome.files["model.neff"].read_bytes())
    assert neffs[0] == neffs[1]
    assert neffs[0] != neffs[2]
    assert read_neff_header(neffs[0])["lnc_size"] == 1


def test_compile_error_keeps_the_error_lines(backend: NeuronxCcBackend, tmp_path: Path) -> None:
    outcome = backend.compile(manifest(), hlo(tmp_path, "double:fail"), tmp_path / "work", 60, never)
    assert not outcome.ok
    assert outcome.failure_class == "compile_error"
    assert outcome.message.startswith("neuronx-cc exited with 70")
    assert "ERROR 70: compilation failed (requested by test double)" in outcome.message
    assert outcome.files == {}
    log = outcome.log_path.read_text()
    assert "NCC_EVRF009" in log and log.rstrip().endswith("ERROR 70: compilation failed (requested by test double)")
    assert not (tmp_path / "work" / "out" / "model.neff").exists()


def test_a_bad_option_value_is_a_compile_error(backend: NeuronxCcBackend, tmp_path: Path) -> None:
    outcome = backend.compile(manifest(flags=["--auto-cast=sometimes"]), hlo(tmp_path), tmp_path / "work", 60, never)
    assert outcome.failure_class == "compile_error"
    assert "exited with 1" in outcome.message and "invalid choice: 'sometimes'" in outcome.message


def test_hang_times_out_and_the_whole_process_group_is_killed(backend: NeuronxCcBackend, tmp_path: Path) -> None:
    started = time.monotonic()
    groups: list[int] = []

    def note_the_group() -> bool:  # polled while it runs: the run's marker names its process group
        marker = tmp_path / "work" / RUN_MARKER
        if not groups and marker.exists():
            groups.append(json.loads(marker.read_text())["pgid"])
        return False

    outcome = backend.compile(manifest(), hlo(tmp_path, "double:hang"), tmp_path / "work", 2, note_the_group)
    assert outcome.failure_class == "timeout"
    assert not outcome.ok and outcome.files == {}
    assert outcome.message == "neuronx-cc timed out after 2.0 s"
    assert 2 <= outcome.seconds < 6 and time.monotonic() - started < 8
    log = outcome.log_path.read_text()
    compiler_pid = int(log.split(" pid ", 1)[1].split()[0])
    helper_pid = int(log.split("helper pid ", 1)[1].split(";")[0])
    # The compiler ran in its own group (led by its supervisor); it and its helper child are gone.
    assert groups and os.getpgid(0) not in groups
    assert live_pids_in_group(groups[0]) == []
    assert not pid_alive(compiler_pid) and not pid_alive(helper_pid)


def test_sigkill_is_classified_as_oom(backend: NeuronxCcBackend, tmp_path: Path) -> None:
    outcome = backend.compile(manifest(), hlo(tmp_path, "double:kill"), tmp_path / "work", 60, never)
    assert outcome.failure_class == "oom"
    assert "SIGKILL" in outcome.message


def test_should_cancel_kills_the_compile(backend: NeuronxCcBackend, tmp_path: Path) -> None:
    flag = threading.Event()
    threading.Timer(0.5, flag.set).start()
    outcome = backend.compile(manifest(), hlo(tmp_path, "double:sleep=30"), tmp_path / "work", 60, flag.is_set)
    assert outcome.failure_class == "cancelled"
    assert outcome.message.startswith("neuronx-cc cancelled after")
    assert outcome.seconds < 5


def test_slow_compile_within_the_timeout_succeeds(backend: NeuronxCcBackend, tmp_path: Path) -> None:
    outcome = backend.compile(manifest(), hlo(tmp_path, "double:sleep=0.6"), tmp_path / "work", 10, never)
    assert outcome.ok, outcome.message
    assert outcome.seconds >= 0.6


def test_truncated_neff_is_written_as_the_compiler_left_it(backend: NeuronxCcBackend, tmp_path: Path) -> None:
    # Exit 0 with a NEFF cut short: the backend passes it on; the publish step checks sizes.
    outcome = backend.compile(manifest(), hlo(tmp_path, "double:truncated"), tmp_path / "work", 60, never)
    assert outcome.ok, outcome.message
    data = outcome.files["model.neff"].read_bytes()
    assert read_neff_header(data)["data_size"] > len(data) - 1024


def test_exit_zero_without_output_is_a_compile_error(tmp_path: Path) -> None:
    quiet = make_script(tmp_path / "neuronx-cc", 'echo "all good, honest"; exit 0')
    backend = NeuronxCcBackend(Settings(neuronx_cc_path=str(quiet), worker_runtime_version=RUNTIME))
    outcome = backend.compile(manifest(), hlo(tmp_path), tmp_path / "work", 60, never)
    assert outcome.failure_class == "compile_error"
    assert "no output written" in outcome.message
    assert outcome.files == {}


def test_manifests_it_cannot_build_fail_before_starting(
    backend: NeuronxCcBackend, double: Path, tmp_path: Path,
) -> None:
    for i, bad in enumerate((manifest(target="cpu"), manifest(fmt="torch-export"))):
        outcome = backend.compile(bad, hlo(tmp_path), tmp_path / f"w{i}", 60, never)
        assert outcome.failure_class == "compile_error"
        assert outcome.message in outcome.log_path.read_text()
    assert not double.exists() or compile_argvs(double) == []


# --- the classifier on its own -----------------------------------------------------------------
@pytest.mark.parametrize(
    "returncode, timed_out, cancelled, expected",
    [
        (0, False, False, None),
        (70, False, False, "compile_error"),
        (-signal.SIGKILL, False, False, "oom"),
        (-signal.SIGSEGV, False, False, "compile_error"),
        (-signal.SIGKILL, True, False, "timeout"),
        (-signal.SIGKILL, False, True, "cancelled"),
    ],
)
def test_classify(tmp_path: Path, returncode: int, timed_out: bool, cancelled: bool, expected: str | None) -> None:
    log = tmp_path / "compile.log"
    log.write_text("line one\nlast words\n\n")
    result = ProcessResult(returncode, timed_out, cancelled, seconds=1.5, timeout_s=3.0)
    outcome = classify(result, "tool", log, {"x": tmp_path / "x"})
    assert outcome.failure_class == expected
    assert outcome.ok is (expected is None)
    assert outcome.files == ({"x": tmp_path / "x"} if expected is None else {})
    assert outcome.seconds == 1.5 and outcome.log_path == log
    if expected == "timeout":
        assert outcome.message == "tool timed out after 3.0 s"
    if returncode == -signal.SIGSEGV:
        assert outcome.message == "tool was killed by SIGSEGV: last words"


def test_build_neff_lays_out_the_documented_header() -> None:
    from tests.doubles.neuronx_cc_double import build_neff

    data = build_neff(
        {"neff.json": b"{}", "sg00/def.json": b"[]"},
        neff_build_version="2.26.1.0+abc",
        name="unet",
        num_tpb=4,
        lnc_size=2,
        feature_bits=5,
    )
    header = read_neff_header(data)
    assert header["header_size"] == 1024 and header["data_size"] == len(data) - 1024
    assert header["hash"] == hashlib.sha256(data[1024:]).digest()
    assert (header["neff_build_version"], header["name"], header["num_tpb"]) == ("2.26.1.0+abc", "unet", 4)
    assert (header["lnc_size"], header["feature_bits"]) == (2, 5)
    with tarfile.open(fileobj=io.BytesIO(data[1024:]), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["neff.json", "sg00/def.json"]
    # Fields can be forced, e.g. to build an inconsistent NEFF for a publish-side check.
    assert read_neff_header(build_neff({"a": b"x"}, data_size=10**6))["data_size"] == 10**6
    with pytest.raises(TypeError):
        build_neff({}, magic=1)
