"""Who may do what: every route against no token and a token of each scope."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.support.api import hlo_model, neuron_spec, upload, wait_job

KEY = "0" * 64
DIGEST = "sha256:" + "0" * 64
SPEC = {"spec": neuron_spec(DIGEST)}
# (method, path, json body, scope needed); "none" needs no token at all.
ROUTES = [
    ("GET", "/healthz", None, "none"),
    ("GET", "/readyz", None, "none"),
    ("GET", "/metrics", None, "none"),
    ("HEAD", f"/v1/blobs/{DIGEST}", None, "read"),
    ("PUT", f"/v1/blobs/{DIGEST}", None, "write"),
    ("POST", "/v1/compile", SPEC, "write"),
    ("POST", "/v1/lookup", SPEC, "read"),
    ("GET", "/v1/jobs", None, "read"),
    ("GET", "/v1/jobs/nope", None, "read"),
    ("GET", "/v1/jobs/nope/log", None, "read"),
    ("POST", "/v1/jobs/nope/cancel", None, "write"),
    ("GET", "/v1/artifacts", None, "read"),
    ("GET", f"/v1/artifacts/{KEY}", None, "read"),
    ("GET", f"/v1/artifacts/{KEY}/files/model.neff", None, "read"),
    ("GET", "/v1/stats", None, "read"),
    ("GET", "/v1/hits", None, "read"),
    ("GET", "/v1/workers", None, "read"),
    ("GET", f"/v1/blobs/{DIGEST}", None, "read"),
    ("POST", "/v1/artifacts", {"spec": SPEC["spec"], "files": [{"name": "model.neff", "digest": DIGEST}]},
     "publish"),
    ("GET", "/v1/toolchains", None, "read"),
    ("GET", "/v1/tokens", None, "admin"),
]
CALLERS = ["none", "read", "write", "publish", "admin"]
RANK = {"none": 0, "read": 1, "write": 2, "publish": 3, "admin": 4}


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("method, path, body, needed", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_route_scopes(running, tokens: dict[str, str], method: str, path: str, body, needed: str, caller: str) -> None:
    headers = {"Authorization": f"Bearer {tokens[caller]}"} if caller != "none" else {}
    r = httpx.request(method, running.url + path, json=body, headers=headers, timeout=30)
    if RANK[caller] >= RANK[needed]:
        assert r.status_code not in (401, 403), (r.status_code, r.text)
    elif caller == "none":
        assert r.status_code == 401
        if method != "HEAD":
            assert r.json()["error"] == "unauthorized" and "token" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
    else:
        assert r.status_code == 403
        if method != "HEAD":
            assert r.json()["error"] == "forbidden" and needed in r.json()["detail"]


def test_unknown_and_revoked_tokens_are_401(running, stack_settings) -> None:
    assert httpx.get(f"{running.url}/v1/stats", headers={"Authorization": "Bearer nfc_made_up"}).status_code == 401
    name = f"short-lived-{uuid.uuid4().hex[:6]}"
    env = running.stack.env()
    admin = [sys.executable, "-m", "neffcache.service.admin", "token"]
    token = subprocess.run(admin + ["create", "--name", name, "--scope", "read", "--all-namespaces"], env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{running.url}/v1/stats", headers=auth).status_code == 200
    subprocess.run(admin + ["revoke", name], env=env, check=True, capture_output=True)
    revoked_at = time.monotonic()
    # The service keeps a token's grant in memory for hot_cache_s (1 s here): refused within that.
    while (r := httpx.get(f"{running.url}/v1/stats", headers=auth)).status_code == 200:
        assert time.monotonic() - revoked_at < stack_settings["hot_cache_s"] + 2, "still accepted"
        time.sleep(0.1)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_admin_command_refuses_bad_input_in_one_line(running) -> None:
    env = running.stack.env()
    r = subprocess.run(
        [sys.executable, "-m", "neffcache.service.admin", "token", "create", "--name", "x", "--scope", "root"],
        env=env, capture_output=True, text=True,
    )
    assert r.returncode == 2 and "scope" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_jobs_and_hits_record_the_token_name(running, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {tokens['write']}"}) as ci:
        digest = upload(ci, hlo_model())
        queued = ci.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()
        job = wait_job(ci, queued["job"]["id"])
    names = {t["scope"]: t["name"] for t in httpx.get(
        f"{running.url}/v1/tokens", headers={"Authorization": f"Bearer {tokens['admin']}"}).json()["tokens"]
        if t["revoked_at"] is None}
    assert job["requested_by"].startswith("test-write-")
    with httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {tokens['read']}"}) as pod:
        assert pod.post("/v1/lookup", json={"spec": neuron_spec(digest)}).status_code == 200
        hits = pod.get(f"/v1/hits?key={queued['key']}").json()["hits"]
    assert [h["caller"] for h in hits] == [names["read"]]
