"""Namespaces are a boundary: a token acts only in its namespaces (403 naming the one it may not
act in), listings keep to them, publishing bytes built elsewhere needs the `publish` scope, and
every artifact records its origin (farm or pushed, and the token), which a pod can require."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.doubles.neuronx_cc_double import build_neff
from tests.support.api import NEURON_RUNTIME, hlo_model, neuron_spec, upload, wait_job
from tests.support.cli import cli_runner

RUN = uuid.uuid4().hex[:6]
A, B = f"team-a-{RUN}", f"team-b-{RUN}"
# name: (scope, namespaces)
TEAM_TOKENS = {
    "a-read": ("read", [A]),
    "a-write": ("write", [A]),
    "a-publish": ("publish", [A]),
    "b-write": ("write", [B]),
    "b-publish": ("publish", [B]),
    "ab-read": ("read", [A, B]),
}


@dataclass
class TeamA:
    """What team A has: a model, a farm-compiled artifact, a pushed one, and a job."""

    model: str
    spec: dict[str, Any]
    farm_key: str
    pushed_key: str
    pushed_spec: dict[str, Any]
    job_id: str


def _token_name(name: str) -> str:
    return f"{name}-{RUN}"


@pytest.fixture(scope="module")
def team_tokens(running) -> dict[str, str]:
    """Made with the real `neffcache-admin token create --namespace ...`."""
    made = {}
    for name, (scope, namespaces) in TEAM_TOKENS.items():
        where = [arg for ns in namespaces for arg in ("--namespace", ns)]
        out = subprocess.run(
            [sys.executable, "-m", "neffcache.service.admin", "token", "create", "--name", _token_name(name),
             "--scope", scope, *where, "--json"], env=running.stack.env(), capture_output=True, text=True, check=True)
        made[name] = json.loads(out.stdout)["token"]
    return made


def _as(running, token: str) -> httpx.Client:
    return httpx.Client(base_url=running.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _publish(api: httpx.Client, spec: dict[str, Any]) -> httpx.Response:
    neff = upload(api, build_neff({"neff.json": json.dumps({"run": uuid.uuid4().hex}).encode()}))
    return api.post("/v1/artifacts", json={"spec": spec, "files": [{"name": "model.neff", "digest": neff}]})


@pytest.fixture(scope="module")
def team_a(running, team_tokens: dict[str, str]) -> TeamA:
    with _as(running, team_tokens["a-write"]) as ci, _as(running, team_tokens["a-publish"]) as pusher:
        model = upload(ci, hlo_model())
        spec = neuron_spec(model, namespace=A)
        queued = ci.post("/v1/compile", json={"spec": spec})
        assert queued.status_code == 202, queued.text
        job = wait_job(ci, queued.json()["job"]["id"])
        assert job["state"] == "succeeded" and job["namespace"] == A
        pushed_spec = neuron_spec(model, namespace=A, compiler={"name": "neuronx-cc", "flags": ["-O1"]})
        pushed = _publish(pusher, pushed_spec)
        assert pushed.status_code == 201, pushed.text
    return TeamA(model, spec, queued.json()["key"], pushed.json()["key"], pushed_spec, job["id"])


def _requests_on(a: TeamA, neff: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    """Every route that acts on team A's namespace: (method, path, json body)."""
    return [
        ("GET", f"/v1/jobs/{a.job_id}", None),
        ("GET", f"/v1/jobs/{a.job_id[:8]}", None),  # a prefix resolves, then the namespace is checked
        ("GET", f"/v1/jobs/{a.job_id}/log", None),
        ("POST", f"/v1/jobs/{a.job_id}/cancel", None),
        ("GET", f"/v1/artifacts/{a.farm_key}", None),
        ("GET", f"/v1/artifacts/{a.farm_key[:12]}", None),
        ("GET", f"/v1/artifacts/{a.farm_key}/files/model.neff", None),
        ("GET", f"/v1/artifacts?namespace={A}", None),
        ("GET", f"/v1/jobs?namespace={A}", None),
        ("POST", "/v1/compile", {"spec": a.spec}),
        ("POST", "/v1/lookup", {"spec": a.spec}),
        ("POST", "/v1/artifacts", {"spec": neuron_spec(a.model, namespace=A, target="inf2"),
                                   "files": [{"name": "model.neff", "digest": neff}]}),
    ]


def test_every_route_refuses_a_token_of_another_namespace_and_names_it(
        running, team_tokens: dict[str, str], team_a: TeamA) -> None:
    with _as(running, team_tokens["b-publish"]) as b, _as(running, team_tokens["a-publish"]) as a:
        neff = upload(b, build_neff({"neff.json": b"{}"}))
        for method, path, body in _requests_on(team_a, neff):
            refused = b.request(method, path, json=body)
            assert refused.status_code == 403, (method, path, refused.text)
            assert refused.json()["error"] == "forbidden" and repr(A) in refused.json()["detail"], refused.text
            assert _token_name("b-publish") in refused.json()["detail"]
            # The route itself works for a token of team A (a GET, so nothing changes; a file
            # download on S3 is a redirect to it).
            if method == "GET":
                allowed = a.get(path)
                assert allowed.status_code in (200, 307), (path, allowed.text)
    with _as(running, team_tokens["a-write"]) as a:
        job = a.get(f"/v1/jobs/{team_a.job_id}").json()
        assert job["state"] == "succeeded", "a refused cancel changed nothing"
        assert a.post("/v1/lookup", json={"spec": neuron_spec(team_a.model, namespace=A, target="inf2")}
                      ).status_code == 404, "a refused publish published nothing"


def test_team_b_cannot_cancel_or_poison_team_a(running, team_tokens: dict[str, str]) -> None:
    """The attack the namespace boundary stops: B cancels A's job, and publishes its own bytes
    under the key A is about to compile, so that A's compile answers `hit` with B's bytes."""
    with _as(running, team_tokens["a-write"]) as a, _as(running, team_tokens["b-publish"]) as b:
        model = upload(a, hlo_model("double:sleep=3"))
        spec = neuron_spec(model, namespace=A)
        queued = a.post("/v1/compile", json={"spec": spec}).json()
        cancel = b.post(f"/v1/jobs/{queued['job']['id']}/cancel")
        assert cancel.status_code == 403 and repr(A) in cancel.json()["detail"]
        poison = _publish(b, neuron_spec(model, namespace=A, target="inf2"))
        assert poison.status_code == 403 and repr(A) in poison.json()["detail"]
        job = wait_job(a, queued["job"]["id"])
        assert job["state"] == "succeeded" and not job["cancel_requested"]
        artifact = a.get(f"/v1/artifacts/{queued['key']}").json()
        assert artifact["origin"] == {"kind": "farm", "token": _token_name("a-write")}
        assert artifact["job_id"] == job["id"] and artifact["namespace"] == A
        # B may publish in its own namespace: that artifact is B's, under another key.
        own = _publish(b, neuron_spec(model, namespace=B))
        assert own.status_code == 201 and own.json()["key"] != queued["key"]
        assert own.json()["artifact"]["origin"] == {"kind": "pushed", "token": _token_name("b-publish")}


def test_compiling_on_the_farm_does_not_let_a_token_publish(running, team_tokens: dict[str, str]) -> None:
    with _as(running, team_tokens["a-write"]) as a:
        refused = _publish(a, neuron_spec(upload(a, hlo_model()), namespace=A))
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert "has scope 'write'; this needs 'publish'" in refused.json()["detail"]


def test_listings_stats_and_hits_keep_to_the_tokens_namespaces(
        running, team_tokens: dict[str, str], team_a: TeamA) -> None:
    with _as(running, team_tokens["a-read"]) as a:
        assert a.post("/v1/lookup", json={"spec": team_a.spec}).status_code == 200  # a hit recorded in A
    with _as(running, team_tokens["b-write"]) as b:
        b_model = upload(b, hlo_model())
        assert b.post("/v1/lookup", json={"spec": neuron_spec(b_model, namespace=B)}).status_code == 404
        artifacts = b.get("/v1/artifacts", params={"limit": 500}).json()["artifacts"]
        jobs = b.get("/v1/jobs", params={"limit": 500}).json()["jobs"]
        assert {x["namespace"] for x in artifacts} <= {B} and {j["namespace"] for j in jobs} <= {B}
        assert b.get("/v1/hits", params={"key": team_a.farm_key}).json()["hits"] == []
        b_stats = b.get("/v1/stats").json()
        # A model of team A's, looked up in B: the nearest published manifests are B's only.
        miss = b.post("/v1/lookup", json={"spec": neuron_spec(team_a.model, namespace=B)})
        assert miss.status_code == 404 and miss.json()["nearest"] == []
    assert b_stats["lookups"] >= 1 and b_stats["lookup_hits"] == 0, b_stats
    with _as(running, team_tokens["ab-read"]) as both:
        keys = {x["key"] for x in both.get("/v1/artifacts", params={"limit": 500}).json()["artifacts"]}
        assert {team_a.farm_key, team_a.pushed_key} <= keys
        assert [h["caller"] for h in both.get("/v1/hits", params={"key": team_a.farm_key}).json()["hits"]][:1] == [
            _token_name("a-read")]
        both_stats = both.get("/v1/stats").json()
        assert both_stats["lookup_hits"] >= 1 and both_stats["lookups"] > b_stats["lookups"]
        miss = both.post("/v1/lookup", json={"spec": neuron_spec(team_a.model, namespace=B)})
        assert miss.status_code == 404 and miss.json()["nearest"], "A's artifacts are visible to a token of A and B"
        assert [d["field"] for d in miss.json()["nearest"][0]["differs"]] == ["namespace"]
        only_pushed = both.get("/v1/artifacts", params={"namespace": A, "origin": "pushed"}).json()["artifacts"]
        assert [x["key"] for x in only_pushed] == [team_a.pushed_key]


def test_pull_can_require_an_artifact_the_farm_compiled(
        running, team_tokens: dict[str, str], team_a: TeamA, tmp_path: Path) -> None:
    pod = cli_runner(running.url, team_tokens["a-read"])
    shown = pod("show", team_a.pushed_key)
    assert shown.rc == 0 and f"pushed, built elsewhere (by {_token_name('a-publish')})" in shown.stdout
    assert "farm, compiled by a worker" in pod("show", team_a.farm_key).stdout

    dest = tmp_path / "pod"
    refused = pod("pull", team_a.farm_key, team_a.pushed_key, "--dest", str(dest), "--require-origin", "farm",
                  "--runtime-version", NEURON_RUNTIME)
    line = refused.one_line_error()
    assert refused.rc == 5 and team_a.pushed_key in line and "was pushed" in line and team_a.farm_key not in line
    assert not dest.exists(), "nothing is written when one artifact is refused"
    ok = pod("pull", team_a.farm_key, "--dest", str(dest), "--require-origin", "farm",
             "--runtime-version", NEURON_RUNTIME, "--json")
    assert ok.rc == 0, ok.stderr
    assert (dest / team_a.farm_key / "model.neff").is_file()
    bad = pod("pull", team_a.farm_key, "--dest", str(dest), "--require-origin", "elsewhere")
    assert bad.rc == 2 and "elsewhere" in bad.stderr

    other = cli_runner(running.url, team_tokens["b-write"])("show", team_a.farm_key)
    assert other.rc == 6 and repr(A) in other.one_line_error()
