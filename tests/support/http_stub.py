"""Tiny HTTP servers for client tests that need an answer the real service never gives."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubHandler(BaseHTTPRequestHandler):
    # The X-Neffcache-Version a stub that answers like neffcache sends; None: a web server that
    # is not neffcache.
    service_version: str | None = None

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if self.service_version is not None:
            self.send_header("X-Neffcache-Version", self.service_version)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run `handler` on a free loopback port in a thread; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def artifact_body(key: str, runtime_version: str, files: dict[str, bytes]) -> dict[str, Any]:
    """An artifact as GET /v1/artifacts/{key} answers it, with these files (name -> bytes)."""
    return {
        "key": key, "created_at": "2026-01-02T03:04:05Z", "compile_seconds": 1.0, "annotations": {},
        "manifest": {"model": {"format": "hlo", "digest": "sha256:" + "1" * 64},
                     "inputs": [{"name": "x", "shape": [1], "dtype": "int64"}], "target": "trn1",
                     "compiler": {"name": "neuronx-cc", "version": "2.21.18209.0", "flags": []},
                     "runtime": {"name": "neuron-runtime", "version": runtime_version}, "namespace": "default"},
        "files": [{"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                  for name, data in files.items()],
    }


class ArtifactService(StubHandler):
    """Answers like neffcache (X-Neffcache-Version on every answer) with one artifact: its JSON to
    GET /v1/artifacts/<anything>, and to GET /v1/artifacts/<key>/files/<name> the Content-Length
    and X-Neffcache-Sha256 (unless `vouch` is false) of `contents[name]`, then its first `sent`
    bytes only (all when None), and the connection closed: how the service ends a body whose
    stored bytes do not hash to their digest."""

    artifact: dict[str, Any] = {}
    contents: dict[str, bytes] = {}
    sent: int | None = None
    vouch = True

    def do_GET(self) -> None:
        _, _, name = self.path.partition("/files/")
        if not name:
            data = json.dumps(self.artifact).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            data = self.contents[name]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if self.vouch:
                self.send_header("X-Neffcache-Sha256", hashlib.sha256(data).hexdigest())
        self.send_header("X-Neffcache-Version", "0.1.0")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data if not name or self.sent is None else data[: self.sent])
        self.wfile.flush()
        self.close_connection = True


class JobLogService(StubHandler):
    """Answers like neffcache with one job: its JSON to GET /v1/jobs/<id> (`state`), and to GET
    /v1/jobs/<id>/log[?offset=N] its `log` from byte N. Once `complete` it is the stored log, sent
    as the service streams one (chunked, X-Neffcache-Log-Complete: true, its digest in
    X-Neffcache-Sha256): its first `sent` bytes
    only (all when None), and the connection closed without the body's end: how the service ends a
    stored log that does not hash to its digest. Not complete, it is a running job's tail, with
    Content-Length (cut at `sent` all the same). `corrupt`: a 502 corrupt_object instead, as the
    service answers for a corrupt stored log that fits in one chunk."""

    protocol_version = "HTTP/1.1"  # chunked bodies
    job_id = ""
    state = "failed"
    log: bytes = b""
    sent: int | None = None
    complete = True
    corrupt = False
    service_version = "0.1.0"

    def do_GET(self) -> None:
        self.close_connection = True
        path, _, query = self.path.partition("?")
        if not path.endswith("/log"):
            self.send_json(200, {"id": self.job_id, "state": self.state, "attempts": 1, "max_attempts": 1})
            return
        if self.corrupt:
            digest = hashlib.sha256(self.log).hexdigest()
            detail = f"the log of job {self.job_id} (sha256:{digest}) is corrupt in the object store"
            self.send_json(502, {"error": "corrupt_object", "detail": detail})
            return
        offset = int(query.partition("offset=")[2] or 0)
        body = self.log[offset:]
        shown = body if self.sent is None else body[: self.sent]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Neffcache-Version", "0.1.0")
        self.send_header("X-Neffcache-Log-Size", str(len(self.log)))
        self.send_header("X-Neffcache-Log-Complete", "true" if self.complete else "false")
        self.send_header("X-Neffcache-Log-Skipped", "0")
        self.send_header("Connection", "close")
        if self.complete:
            self.send_header("X-Neffcache-Sha256", hashlib.sha256(self.log).hexdigest())
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for start in range(0, len(shown), 64 * 1024):
                piece = shown[start:start + 64 * 1024]
                self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            if self.sent is None:
                self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(shown)
        self.wfile.flush()
