"""Deployment lock files: `neffcache lock` in CI, `neffcache pull --lock` in a pod's init container.

A pull by lock asks the service nothing but "is this key published, and with which files?"
(GET /v1/artifacts/{key}) and the files themselves: it is checked here through a proxy that lets
only GETs through, and with the service's lookup counter.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import NEURON_RUNTIME, hlo_model, neuron_spec, published, stats
from tests.support.cli import client_env, files_under, run_cli, write_yaml
from tests.support.http_stub import StubHandler, serve


class _GetOnlyProxy(StubHandler):
    """Forwards GET and HEAD to the service (redirects passed on as they are); refuses anything
    else, as a service whose key computation is unavailable would. Records every request."""

    upstream = ""
    seen: list[str] = []

    def _forward(self, method: str) -> None:
        type(self).seen.append(f"{method} {self.path}")
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "user-agent", "accept")}
        with httpx.Client(timeout=60) as client:
            r = client.request(method, self.upstream + self.path, headers=headers)
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("transfer-encoding", "connection", "content-encoding", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(r.content)

    def do_GET(self) -> None:
        self._forward("GET")

    def do_HEAD(self) -> None:
        self._forward("HEAD")

    def do_POST(self) -> None:
        type(self).seen.append(f"POST {self.path}")
        self.send_json(503, {"error": "not_ready", "detail": "key computation unavailable (test proxy)"})


@pytest.fixture
def get_only(running) -> Iterator[tuple[str, type[_GetOnlyProxy]]]:
    handler = type("Handler", (_GetOnlyProxy,), {"seen": [], "upstream": running.url})
    with serve(handler) as url:
        yield url, handler


def _deployment(api: httpx.Client, tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """Two published models and the deployment spec file naming them."""
    artifacts = []
    specs = []
    for name in ("encoder", "decoder"):
        data, artifact = published(api)
        (tmp_path / f"{name}.hlo.pb").write_bytes(data)
        spec = neuron_spec("sha256:" + "0" * 64)
        spec["model"] = {"path": f"{name}.hlo.pb"}
        specs.append({"name": name, **spec})
        artifacts.append(artifact)
    return write_yaml(tmp_path / "deploy.yaml", specs), artifacts


def test_lock_then_pull_by_lock_computes_no_key(cli, api: httpx.Client, tokens: dict[str, str], get_only,
                                                tmp_path: Path) -> None:
    spec_file, artifacts = _deployment(api, tmp_path)
    made = cli("lock", "--spec", str(spec_file))
    assert made.rc == 0, made.stderr
    doc = made.json()
    assert doc["lock_version"] == 1
    assert [a["key"] for a in doc["artifacts"]] == [a["key"] for a in artifacts]
    assert [a["names"] for a in doc["artifacts"]] == [["encoder"], ["decoder"]]
    for entry, artifact in zip(doc["artifacts"], artifacts, strict=False):
        assert entry["target"] == "trn1" and entry["runtime"] == {"name": "neuron-runtime", "version": NEURON_RUNTIME}
        assert entry["compiler"]["name"] == "neuronx-cc" and entry["model"] == artifact["manifest"]["model"]
        assert [(f["name"], f["digest"], f["size"]) for f in entry["files"]] == [
            (f["name"], f["digest"], f["size"]) for f in artifact["files"]]
    lock = tmp_path / "deploy.lock.json"
    to_file = cli("lock", "--spec", str(spec_file), "--output", str(lock))
    assert to_file.rc == 0 and to_file.stdout == "" and "locked 2 artifact(s)" in to_file.stderr
    assert json.loads(lock.read_text()) == doc

    # The pod: a read-only token, through a proxy that refuses every POST (no lookup, no compile).
    url, proxy = get_only
    before = stats(api)
    dest = tmp_path / "neffs"
    pulled = run_cli(["pull", "--lock", str(lock), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, "--json"],
                     client_env(url, tokens["read"]))
    assert pulled.rc == 0, (pulled.stdout, pulled.stderr)
    assert stats(api)["lookups"] == before["lookups"]
    assert not [s for s in proxy.seen if not s.startswith(("GET /v1/artifacts/", "HEAD /v1/artifacts/"))], proxy.seen
    for artifact in artifacts:
        for f in artifact["files"]:
            assert hashlib.sha256((dest / artifact["key"] / f["name"]).read_bytes()).hexdigest() == f["sha256"]
    assert pulled.json()["from_lock"] == str(lock)

    # What a pull records in DEST is a lock too: feed it back.
    recorded = dest / "neffcache.lock.json"
    assert [a["key"] for a in json.loads(recorded.read_text())["artifacts"]] == [a["key"] for a in artifacts]
    again = cli("pull", "--lock", str(recorded), "--dest", str(tmp_path / "other"), "--runtime-version",
                NEURON_RUNTIME, "--json")
    assert again.rc == 0, again.stderr
    assert {f["status"] for a in again.json()["artifacts"] for f in a["files"]} == {"downloaded"}
    # The runtime is still checked, before anything is written.
    wrong = cli("pull", "--lock", str(lock), "--dest", str(tmp_path / "wrong"), "--runtime-version", "2.33.10.0")
    assert wrong.rc == 5 and not (tmp_path / "wrong").exists()


def test_a_missing_artifact_in_the_lock_exits_4_and_leaves_the_destination_empty(cli, api: httpx.Client,
                                                                                  tmp_path: Path) -> None:
    spec_file, artifacts = _deployment(api, tmp_path)
    doc = cli("lock", "--spec", str(spec_file)).json()
    doc["artifacts"][1]["key"] = "f" * 64  # e.g. a key of a cache that was since emptied
    lock = tmp_path / "deploy.lock.json"
    lock.write_text(json.dumps(doc))
    dest = tmp_path / "neffs"
    r = cli("pull", "--lock", str(lock), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, "--json")
    assert r.rc == 4, (r.stdout, r.stderr)
    line = r.one_line_error()
    assert "f" * 64 in line and "1 of 2" in line and "(decoder)" in line and artifacts[0]["key"] not in line
    assert r.json()["error"] == "not_found"
    assert files_under(dest) == [] and not dest.exists()
    into = tmp_path / "neuron-cache"
    assert cli("pull", "--lock", str(lock), "--into-neuron-cache", str(into), "--runtime-version",
               NEURON_RUNTIME).rc == 4
    assert not into.exists()


def test_a_lock_whose_digest_the_service_disagrees_with_exits_5(cli, api: httpx.Client, tmp_path: Path) -> None:
    spec_file, artifacts = _deployment(api, tmp_path)
    doc = cli("lock", "--spec", str(spec_file)).json()
    neff = next(f for f in doc["artifacts"][0]["files"] if f["name"] == "model.neff")
    published_digest = neff["digest"]
    neff["digest"] = "sha256:" + "0" * 64
    lock = tmp_path / "deploy.lock.json"
    lock.write_text(json.dumps(doc))
    dest = tmp_path / "neffs"
    r = cli("pull", "--lock", str(lock), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, "--json")
    assert r.rc == 5, (r.stdout, r.stderr)
    line = r.one_line_error()
    assert "model.neff" in line and "0" * 64 in line and published_digest in line
    assert r.json()["error"] == "integrity_failure"
    assert not dest.exists()
    # A file the artifact does not have is a disagreement too.
    neff["digest"] = published_digest
    neff["name"] = "other.neff"
    lock.write_text(json.dumps(doc))
    r = cli("pull", "--lock", str(lock), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
    assert r.rc == 5 and "other.neff" in r.one_line_error() and not dest.exists()


def test_lock_of_a_miss_writes_nothing_and_bad_locks_exit_2(cli, api: httpx.Client, tmp_path: Path) -> None:
    (tmp_path / "never.hlo.pb").write_bytes(hlo_model())
    spec = neuron_spec("sha256:" + "0" * 64)
    spec["model"] = {"path": "never.hlo.pb"}
    spec_file = write_yaml(tmp_path / "deploy.yaml", [{"name": "never", **spec}])
    out = tmp_path / "deploy.lock.json"
    miss = cli("lock", "--spec", str(spec_file), "--output", str(out))
    assert miss.rc == 4 and "(never)" in miss.one_line_error() and not out.exists()
    assert cli("lock", "--spec", str(spec_file)).stdout == ""

    dest = tmp_path / "d"
    cases = [
        ("{not json", "not valid JSON"),
        (json.dumps({"artifacts": []}), "lock_version"),
        (json.dumps({"lock_version": 9, "artifacts": [{"key": "a" * 64, "files": []}]}), "newer"),
        (json.dumps({"lock_version": 1, "artifacts": [{"key": "xyz", "files": []}]}), "artifacts[0].key"),
        (json.dumps({"lock_version": 1, "artifacts": [{"key": "a" * 64, "files": [
            {"name": "model.neff", "digest": "sha256:abc", "size": 1}]}]}), "artifacts[0].files[0].digest"),
    ]
    for text, in_message in cases:
        out.write_text(text)
        r = cli("pull", "--lock", str(out), "--dest", str(dest))
        assert r.rc == 2, (text, r.stderr)
        assert in_message in r.one_line_error() and str(out) in r.one_line_error()
    both = cli("pull", "a" * 64, "--lock", str(out), "--dest", str(dest))
    assert both.rc == 2 and "--lock" in both.one_line_error()
    assert cli("lock").rc == 2
    assert not dest.exists()
