"""End to end on the inductor backend: upload, compile, download, run, and the second ask is a hit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx

from tests.support.api import inductor_spec, stats, upload, wait_job


def test_upload_compile_download_hit(api: httpx.Client, tmp_path: Path) -> None:
    import torch

    from tests.support.models import save_tiny_exported_model

    model, inputs = save_tiny_exported_model(tmp_path / "model.pt2", batch=4, features=16, seed=11)
    digest = upload(api, (tmp_path / "model.pt2").read_bytes())
    spec = inductor_spec(digest, [4, 16])
    before = stats(api)

    first = api.post("/v1/compile", json={"spec": spec})
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "queued" and first.json()["deduplicated"] is False
    # Left out of the spec, the version and ISA level are filled in and part of the key.
    resolved = first.json()["spec"]
    assert resolved["compiler"]["version"] == torch.__version__ == resolved["runtime"]["version"]
    job = wait_job(api, first.json()["job"]["id"], timeout_s=300)
    assert job["state"] == "succeeded", job
    key = first.json()["key"]

    artifact = api.get(f"/v1/artifacts/{key}").json()
    assert artifact["manifest"]["isa"] == "x86-64-v3"
    package = next(f for f in artifact["files"] if f["name"] == "model.pt2")
    download = api.get(f"/v1/artifacts/{key}/files/model.pt2", follow_redirects=True)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == package["sha256"]
    assert len(download.content) == package["size"]
    (tmp_path / "compiled.pt2").write_bytes(download.content)
    compiled = torch._inductor.aoti_load_package(str(tmp_path / "compiled.pt2"))
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), model(*inputs))

    second = api.post("/v1/compile", json={"spec": spec})
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "hit" and second.json()["artifact"]["key"] == key
    jobs = [j for j in api.get("/v1/jobs?limit=500").json()["jobs"] if j["key"] == key]
    assert len(jobs) == 1  # the hit made no new job

    after = stats(api)
    assert after["lookups"] - before["lookups"] == 2
    assert after["hits"] - before["hits"] == 1
    assert after["misses"] - before["misses"] == 1
    assert after["downloads"] - before["downloads"] == 1
    assert after["compile_seconds_saved"] > before["compile_seconds_saved"]
    assert after["by_target"]["cpu"]["hits"] >= 1
    assert f"inductor=={torch.__version__}" in after["by_compiler"]

    # A different shape misses, and the miss names the field that differs from what exists.
    miss = api.post("/v1/lookup", json={"spec": inductor_spec(digest, [8, 16])})
    assert miss.status_code == 404 and miss.json()["error"] == "not_found"
    nearest = miss.json()["nearest"]
    assert nearest[0]["key"] == key
    assert nearest[0]["differs"] == [{"field": "inputs[0].shape", "wanted": [8, 16], "found": [4, 16]}]

    listed = api.get(f"/v1/artifacts?model={digest}&target=cpu&compiler=inductor").json()["artifacts"]
    assert [a["key"] for a in listed] == [key]
