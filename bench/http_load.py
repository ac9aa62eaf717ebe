"""An HTTP/1.1 keep-alive load generator for the benchmarks (bench/hit_path.py): `run_load` runs
it in a child process (this file, its job as JSON on stdin), so that the server measured keeps a
core of its own. Raw asyncio streams (uvloop when installed): `concurrency` connections send the
same request bytes back to back for `duration` seconds after `warmup`; every status is checked,
and latencies give p50/p99."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
WARMUP_S = 1.0
GRACE_S = 60.0  # how long a request sent inside the window is waited for after it




def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """(status, keep-alive, body) of one response."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    keep = b"connection: close" not in lower
    body = b""
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(lower[at + 17:end])
        if length:
            body = await reader.readexactly(length)
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            body += (await reader.readexactly(size + 2))[:-2]
            if size == 0:
                break
    else:
        body = await reader.read()  # body to EOF
        keep = False
    return status, keep, body


async def _load(job: dict[str, Any]) -> dict[str, Any]:
    """Each connection sends the request, reads the answer, and again, until the window ends.
    Throughput counts the answers that arrived inside the window (after the warm-up); latency is
    that of every request sent inside it, waited for up to `grace` seconds after the window."""
    request = base64.b64decode(job["request"])
    expect = job["expect"]
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    done_in_window = 0
    unfinished = 0
    reconnects = 0
    loop_start = time.perf_counter()
    t0 = loop_start + job["warmup"]
    t1 = t0 + job["duration"]
    give_up = t1 + job["grace"]

    async def one_connection() -> None:
        nonlocal reconnects, done_in_window, unfinished
        reader, writer = await asyncio.open_connection(job["host"], job["port"])
        try:
            while True:
                start = time.perf_counter()
                if start >= t1:
                    return
                writer.write(request)
                try:
                    status, keep, _ = await asyncio.wait_for(_read_response(reader), give_up - start)
                except TimeoutError:
                    unfinished += 1
                    return
                end = time.perf_counter()
                if start >= t0:
                    latencies.append(end - start)
                    statuses[status] = statuses.get(status, 0) + 1
                if t0 <= end <= t1 and status == expect:
                    done_in_window += 1
                if not keep:
                    writer.close()
                    reconnects += 1
                    reader, writer = await asyncio.open_connection(job["host"], job["port"])
        finally:
            writer.close()

    await asyncio.gather(*(one_connection() for _ in range(job["concurrency"])))
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(p * n))] * 1000 if n else float("nan")

    wrong = {str(k): v for k, v in statuses.items() if k != expect}
    return {"requests": n, "ok": statuses.get(expect, 0), "wrong": wrong,
            "unfinished": unfinished, "rps": done_in_window / job["duration"], "p50_ms": pct(0.50),
            "p99_ms": pct(0.99), "reconnects": reconnects}


def load_main() -> int:
    job = json.loads(sys.stdin.read())
    loop = _new_loop()
    try:
        print(json.dumps(loop.run_until_complete(_load(job))))
    finally:
        loop.close()
    return 0


def run_load(port: int, request: bytes, expect: int, args: argparse.Namespace) -> dict[str, Any]:
    job = {"host": HOST, "port": port, "request": base64.b64encode(request).decode(), "expect": expect,
           "concurrency": args.concurrency, "duration": args.duration, "warmup": WARMUP_S, "grace": GRACE_S}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve())], input=json.dumps(job), capture_output=True,
                          text=True, timeout=args.duration + WARMUP_S + GRACE_S + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(load_main())
