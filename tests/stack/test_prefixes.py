"""Key and job-id prefixes, and the lookup-hit and download counts, over HTTP and from the command,
against the running stack (the in-process cases are tests/unit/service/test_resolve.py)."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import httpx

from neffcache.db.models import Artifact, Job, utcnow
from neffcache.errors import EXIT_USAGE
from tests.support.api import (
    SAMPLE_MANIFEST,
    digest_of,
    error_body,
    key_with_prefix,
    neuron_spec,
    published,
    stats,
)


# --- over HTTP, against the running stack ------------------------------------------------------
def test_prefixes_over_http(api: httpx.Client, cli) -> None:
    _, artifact = published(api)
    key, job_id = artifact["key"], artifact["job_id"]
    assert api.get(f"/v1/jobs/{job_id[:8]}").json()["id"] == job_id
    assert api.get(f"/v1/jobs/{job_id[:13]}").json()["id"] == job_id
    log = api.get(f"/v1/jobs/{job_id[:8]}/log")
    assert log.status_code == 200 and log.text and log.text == api.get(f"/v1/jobs/{job_id}/log").text
    assert api.post(f"/v1/jobs/{job_id[:8]}/cancel").json()["error"] == "job_finished"

    shown = api.get(f"/v1/artifacts/{key[:12]}")  # the 12 characters the `jobs` table prints
    assert shown.status_code == 200 and shown.json()["key"] == key
    neff = next(f for f in shown.json()["files"] if f["name"] == "model.neff")
    download = api.get(f"/v1/artifacts/{key[:8]}/files/model.neff", follow_redirects=True)
    assert download.status_code == 200 and hashlib.sha256(download.content).hexdigest() == neff["sha256"]
    assert error_body(api.get(f"/v1/artifacts/{key[:7]}"), 400, "invalid_parameter")["field"] == "key"
    assert error_body(api.get("/v1/jobs/nope"), 400, "invalid_parameter")["field"] == "job_id"
    assert error_body(api.get("/v1/artifacts/" + _fresh_prefix(api)), 404, "not_found")

    # The command: `neffcache show 901c66ed` and `neffcache logs 394a1b2c` work.
    by_prefix = cli("show", key[:12], "--json")
    assert by_prefix.rc == 0 and by_prefix.json()["key"] == key, by_prefix.stderr
    logs = cli("logs", job_id[:8])
    assert logs.rc == 0 and logs.stdout.strip() == log.text.strip()


def test_an_ambiguous_prefix_over_http_and_from_the_command(
    api: httpx.Client, cli, stack_settings: dict[str, Any],
) -> None:
    # Keys are sha256 and job ids random: two that share a prefix are written into the stack's
    # database as the service writes them, under a prefix nothing else has.
    from neffcache.db.session import Database

    prefix = _fresh_prefix(api)
    keys = [key_with_prefix(prefix, "1"), key_with_prefix(prefix, "2")]
    ids = [f"{prefix}-0000-4000-8000-00000000000{i}" for i in (1, 2)]
    manifest = {**SAMPLE_MANIFEST, "model": {"format": "hlo", "digest": "sha256:" + uuid.uuid4().hex * 2}}
    db = Database(stack_settings["database_url"])
    try:
        with db.session() as session:
            for key, job_id in zip(keys, ids, strict=True):
                session.add(Artifact.from_manifest(key, manifest, [], compile_seconds=1.0, job_id=None,
                                                   annotations=None))
                session.add(Job(id=job_id, key=key, manifest=manifest, queue="q", state="succeeded", attempts=1,
                                max_attempts=1, cancel_requested=False, created_at=utcnow()))
    finally:
        db.dispose()
    for path, field, found in ((f"/v1/artifacts/{prefix}", "key", keys),
                               (f"/v1/artifacts/{prefix}/files/model.neff", "key", keys),
                               (f"/v1/jobs/{prefix}", "job_id", ids), (f"/v1/jobs/{prefix}/log", "job_id", ids)):
        body = error_body(api.get(path), 409, "ambiguous_prefix")
        assert body["candidates"] == found and body["field"] == field
    assert error_body(api.post(f"/v1/jobs/{prefix}/cancel"), 409, "ambiguous_prefix")["candidates"] == ids
    assert api.get(f"/v1/artifacts/{keys[1][:9]}").json()["key"] == keys[1]

    for args in (("show", prefix), ("logs", prefix), ("cancel", prefix)):
        r = cli(*args, "--json")
        assert r.rc == EXIT_USAGE, (args, r.stdout, r.stderr)
        line = r.one_line_error()
        assert "ambiguous" in line and prefix in line
        assert r.json()["error"] == "ambiguous_prefix"


def _fresh_prefix(api: httpx.Client) -> str:
    """8 hex characters that no artifact key and no job id starts with."""
    while True:
        prefix = uuid.uuid4().hex[:8]
        if (api.get(f"/v1/artifacts/{prefix}").status_code == 404
                and api.get(f"/v1/jobs/{prefix}").status_code == 404):
            return prefix


def test_lookup_hit_and_download_counts_over_http(api: httpx.Client) -> None:
    data, artifact = published(api)  # its compile request was a miss
    key = artifact["key"]
    assert (artifact["lookup_hits"], artifact["downloads"]) == (0, 0)
    before = stats(api)
    assert api.post("/v1/lookup", json={"spec": neuron_spec(digest_of(data))}).status_code == 200
    assert api.get(f"/v1/artifacts/{key}/files/model.neff", follow_redirects=True).status_code == 200
    after = stats(api)
    shown = api.get(f"/v1/artifacts/{key}").json()
    assert (shown["lookup_hits"], shown["downloads"]) == (1, 1)
    assert (after["lookup_hits"] - before["lookup_hits"], after["downloads"] - before["downloads"]) == (1, 1)
