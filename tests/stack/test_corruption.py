"""A corrupt stored object is repaired or reported, never remembered as the model's fault, and never
served as if it were sound (issue 8), against the running service and workers."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from neffcache.settings import Settings
from neffcache.storage import open_store
from tests.support.api import error_body, hlo_model, neuron_spec, upload, wait_job
from tests.support.tamper import overwrite_stored_bytes


def flipped(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def test_a_corrupt_model_blob_fails_the_job_and_a_reupload_repairs_it(
    api: httpx.Client, stack_settings: dict[str, Any]
) -> None:
    model = hlo_model()
    digest = upload(api, model)
    overwrite_stored_bytes(open_store(Settings(**stack_settings)), digest.split(":")[1], flipped(model))
    spec = neuron_spec(digest)

    job = wait_job(api, api.post("/v1/compile", json={"spec": spec}).json()["job"]["id"])

    # The store's copy is at fault, not the model: the job says so and how to repair it, and
    # its failure is not one the cache remembers (retried as a transient one, it failed again).
    assert job["state"] == "failed", job
    assert job["failure_class"] == "storage_unavailable", job
    assert job["attempts"] == stack_settings["max_attempts"]
    # The first attempt found the copy corrupt and moved it aside; the last found it missing.
    # Either way the message says the store is at fault and that an upload repairs it.
    assert f"model blob {digest} is missing from the object store (moved aside as corrupt" in job["message"]
    assert "upload the model again (`neffcache compile` does" in job["message"]
    # Moved aside, it reads as missing: `neffcache compile` (which asks HEAD before uploading)
    # uploads the model again instead of trusting the damaged copy.
    assert api.head(f"/v1/blobs/{digest}").status_code == 404

    repaired = api.put(f"/v1/blobs/{digest}", content=model)
    assert repaired.status_code == 201, repaired.text
    assert repaired.json()["created"] is True

    # Not `force`: the earlier failure is not remembered, so the same request compiles.
    again = api.post("/v1/compile", json={"spec": spec})
    assert again.status_code == 202 and again.json()["status"] == "queued", again.text
    assert wait_job(api, again.json()["job"]["id"])["state"] == "succeeded"


def test_a_corrupt_blob_download_fails_or_is_redirected_with_its_digest(
    api: httpx.Client, stack_settings: dict[str, Any], storage_kind: str
) -> None:
    model = hlo_model() * 100_000  # several MiB: streamed in several chunks
    digest = upload(api, model)
    overwrite_stored_bytes(open_store(Settings(**stack_settings)), digest.split(":")[1], flipped(model))

    if storage_kind == "s3":
        # The bytes come from S3 itself: the redirect names the digest, which the client checks.
        r = api.get(f"/v1/blobs/{digest}", follow_redirects=False)
        assert r.status_code == 307 and r.headers["x-neffcache-sha256"] == hashlib.sha256(model).hexdigest()
        fetched = httpx.get(r.headers["location"], timeout=60).content
        assert hashlib.sha256(fetched).hexdigest() != r.headers["x-neffcache-sha256"]
        return
    # The folder store: the service streams the bytes itself, and cuts the transfer short of
    # the last chunk when they do not hash to the digest.
    received = 0
    with pytest.raises(httpx.RemoteProtocolError):
        with api.stream("GET", f"/v1/blobs/{digest}") as r:
            assert r.status_code == 200
            for chunk in r.iter_raw():
                received += len(chunk)
    assert received < len(model)
    # The small corrupt object is a clean error naming it.
    small = hlo_model()
    small_digest = upload(api, small)
    overwrite_stored_bytes(open_store(Settings(**stack_settings)), small_digest.split(":")[1], flipped(small))
    error_body(api.get(f"/v1/blobs/{small_digest}"), 502, "corrupt_object", small_digest.split(":")[1])
