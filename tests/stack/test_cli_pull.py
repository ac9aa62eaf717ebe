"""`neffcache pull` fails closed: corrupt bytes, a runtime mismatch or one missing spec write nothing
under a final name, and each exits with its documented code."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from neffcache.settings import Settings
from neffcache.storage import open_store
from tests.doubles.neuronx_cc_double import build_neff
from tests.support.api import (
    NEURON_RUNTIME,
    hlo_model,
    neuron_spec,
    published,
    upload,
)
from tests.support.cli import client_env, files_under, run_cli, write_yaml
from tests.support.http_stub import StubHandler, serve
from tests.support.snapshot import snapshot
from tests.support.tamper import overwrite_stored_bytes


def test_pull_by_key_into_dest_key_name(cli, api: httpx.Client, tokens: dict[str, str], tmp_path: Path) -> None:
    _, artifact = published(api)
    key = artifact["key"]
    dest = tmp_path / "neffs"
    # A serving pod holds a read-only token.
    r = cli("pull", key, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, NEFFCACHE_TOKEN=tokens["read"])
    assert r.rc == 0, r.stderr
    assert "pulled 1 artifact" in r.stderr
    for f in artifact["files"]:
        path = dest / key / f["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f["sha256"]

    # A file lost or damaged on the volume is fetched again; the intact one is left alone.
    neff = dest / key / "model.neff"
    log = dest / key / "compile.log"
    neff.write_bytes(b"half a neff")
    log.unlink()
    again = cli("pull", key, "--dest", str(dest), "--json", NEFFCACHE_RUNTIME_VERSION=NEURON_RUNTIME)
    assert again.rc == 0, again.stderr
    status = {f["name"]: f["status"] for f in again.json()["artifacts"][0]["files"]}
    assert status == {"model.neff": "downloaded", "compile.log": "downloaded"}
    assert hashlib.sha256(neff.read_bytes()).hexdigest() == next(
        f["sha256"] for f in artifact["files"] if f["name"] == "model.neff")
    third = cli("pull", key, "--dest", str(dest), "--json", "--runtime-version", f"neuron-runtime={NEURON_RUNTIME}")
    assert {f["status"] for f in third.json()["artifacts"][0]["files"]} == {"present"}


# Who finds a corrupt object: on S3 the client, hashing what the presigned URL gives it; with the
# folder store the service, which verifies what it streams itself. Either way: exit 5.
CORRUPTION_FOUND_BY = {"s3": "integrity_failure", "filesystem": "corrupt_object"}


def test_object_altered_after_publishing_exits_5_and_leaves_nothing_under_its_name(
        cli, api: httpx.Client, stack_settings: dict[str, Any], storage_kind: str, tmp_path: Path) -> None:
    _, artifact = published(api)
    key = artifact["key"]
    neff = next(f for f in artifact["files"] if f["name"] == "model.neff")
    store = open_store(Settings(**stack_settings))
    original = store.open(neff["sha256"]).read()
    # Same length, one byte flipped: only the digest can tell.
    overwrite_stored_bytes(store, neff["sha256"], original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        dest = tmp_path / "neffs"
        r = cli("pull", key, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, "--json")
        assert r.rc == 5, (r.stdout, r.stderr)
        line = r.one_line_error()
        assert "model.neff" in line and neff["sha256"] in line
        assert r.json()["error"] == CORRUPTION_FOUND_BY[storage_kind]
        assert not (dest / key / "model.neff").exists()
        assert not [p for p in files_under(dest) if p.name.startswith(".")]  # no temp file left behind
    finally:
        overwrite_stored_bytes(store, neff["sha256"], original)


def test_a_large_object_altered_after_publishing_exits_5_with_one_line(
        cli, api: httpx.Client, stack_settings: dict[str, Any], tmp_path: Path) -> None:
    # More than one chunk (1 MiB): with the folder store the service cannot answer a clean 502 once
    # the body has begun, so it holds back the last chunk and ends the body early; the client reads
    # that as the integrity failure it is, not as an unreachable service (exit 6).
    weights = os.urandom(3 * 1024 * 1024 + 17)
    neff = build_neff({"neff.json": b"{}"})
    spec = neuron_spec(upload(api, hlo_model()))
    files = [{"name": "model.neff", "digest": upload(api, neff)},
             {"name": "weights.bin", "digest": upload(api, weights)}]
    published_now = api.post("/v1/artifacts", json={"spec": spec, "files": files})
    assert published_now.status_code == 201, published_now.text
    key = published_now.json()["key"]
    sha = hashlib.sha256(weights).hexdigest()
    store = open_store(Settings(**stack_settings))
    middle = len(weights) // 2
    overwrite_stored_bytes(store, sha, weights[:middle] + bytes([weights[middle] ^ 0x01]) + weights[middle + 1:])
    try:
        dest = tmp_path / "neffs"
        r = cli("pull", key, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
        assert r.rc == 5, (r.stdout, r.stderr)
        line = r.one_line_error()
        assert "weights.bin" in line and key in line and sha in line, line
        as_json = cli("pull", key, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, "--json")
        assert as_json.rc == 5 and as_json.json()["error"] == "integrity_failure", as_json.stdout
        assert files_under(dest) == [] and not dest.exists()
    finally:
        overwrite_stored_bytes(store, sha, weights)
    # Repaired, it pulls.
    assert cli("pull", key, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME).rc == 0
    assert (dest / key / "weights.bin").read_bytes() == weights


def test_runtime_mismatch_exits_5_naming_both_versions(cli, api: httpx.Client, tmp_path: Path) -> None:
    _, artifact = published(api)
    dest = tmp_path / "neffs"
    by_flag = cli("pull", artifact["key"], "--dest", str(dest), "--runtime-version", "2.33.9.0")
    assert by_flag.rc == 5
    line = by_flag.one_line_error()
    assert NEURON_RUNTIME in line and "2.33.9.0" in line and "--runtime-version" in line
    by_env = cli("pull", artifact["key"], "--dest", str(dest), NEFFCACHE_RUNTIME_VERSION="2.31.0.0")
    assert by_env.rc == 5
    assert (NEURON_RUNTIME in by_env.stderr and "2.31.0.0" in by_env.stderr
            and "NEFFCACHE_RUNTIME_VERSION" in by_env.stderr)
    # No neuron-ls and no dpkg package on this machine: unknown is refused too (fail closed).
    detected = cli("pull", artifact["key"], "--dest", str(dest), PATH="/nonexistent")
    assert detected.rc == 5 and NEURON_RUNTIME in detected.one_line_error()
    assert files_under(dest) == []


def test_one_spec_of_three_missing_exits_4_and_writes_nothing(cli, api: httpx.Client, tmp_path: Path) -> None:
    first, _ = published(api)
    second, _ = published(api)
    (tmp_path / "a.hlo.pb").write_bytes(first)
    (tmp_path / "b.hlo.pb").write_bytes(second)
    (tmp_path / "never.hlo.pb").write_bytes(hlo_model())  # never compiled, never uploaded

    def spec(path: str, name: str) -> dict[str, Any]:
        s = neuron_spec("sha256:" + "0" * 64)
        s["model"] = {"path": path}
        return {"name": name, **s}

    spec_file = write_yaml(tmp_path / "deploy.yaml",
                           [spec("a.hlo.pb", "a"), spec("never.hlo.pb", "never"), spec("b.hlo.pb", "b")])
    dest = tmp_path / "neffs"
    r = cli("pull", "--spec", str(spec_file), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, "--json")
    assert r.rc == 4, (r.stdout, r.stderr)
    line = r.one_line_error()
    assert "1 of 3" in line and "(never)" in line and "(a)" not in line
    assert r.json()["error"] == "not_found" and len(r.json()["misses"]) == 1
    assert not dest.exists()

    # The same with the two that exist: both land, and the lock names them.
    ok_file = write_yaml(tmp_path / "ok.yaml", [spec("a.hlo.pb", "a"), spec("b.hlo.pb", "b")])
    ok = cli("pull", "--spec", str(ok_file), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
    assert ok.rc == 0, ok.stderr
    lock = json.loads((dest / "neffcache.lock.json").read_text())  # what it pulled, recorded
    assert [a["names"] for a in lock["artifacts"]] == [["a"], ["b"]]
    for a in lock["artifacts"]:
        for f in a["files"]:
            assert "sha256:" + hashlib.sha256((dest / f["path"]).read_bytes()).hexdigest() == f["digest"]


def test_missing_key_exits_4_and_writes_nothing(cli, api: httpx.Client, tmp_path: Path) -> None:
    _, artifact = published(api)
    dest = tmp_path / "neffs"
    r = cli("pull", artifact["key"], "f" * 64, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
    assert r.rc == 4 and "f" * 64 in r.one_line_error()
    assert not dest.exists()


# --- by name, and all or nothing ---------------------------------------------------------------
def _named_specs(tmp_path: Path, models: dict[str, bytes]) -> Path:
    """A spec file with one named entry per model (the model files written beside it)."""
    entries = []
    for name, data in models.items():
        (tmp_path / f"{name}.hlo.pb").write_bytes(data)
        s = neuron_spec("sha256:" + "0" * 64)
        s["model"] = {"path": f"{name}.hlo.pb"}
        entries.append({"name": name, **s})
    return write_yaml(tmp_path / f"{'-'.join(models)}.yaml", entries)


def test_pull_makes_each_spec_entry_reachable_by_its_name(cli, api: httpx.Client, tmp_path: Path) -> None:
    encoder_data, encoder = published(api)
    decoder_data, decoder = published(api)
    spec_file = _named_specs(tmp_path, {"encoder-b1": encoder_data, "decoder-b1": decoder_data})
    dest = tmp_path / "neffs"
    r = cli("pull", "--spec", str(spec_file), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
    assert r.rc == 0, r.stderr
    for name, artifact in (("encoder-b1", encoder), ("decoder-b1", decoder)):
        for f in artifact["files"]:
            by_name = dest / "by-name" / name / f["name"]
            assert hashlib.sha256(by_name.read_bytes()).hexdigest() == f["sha256"]
            assert by_name.resolve() == (dest / artifact["key"] / f["name"]).resolve()
        assert not (dest / "by-name" / name).readlink().is_absolute()  # the volume may be mounted elsewhere

    # A pod pulling by the lock (as the README's init container does) gets the same names.
    other = tmp_path / "pod"
    by_lock = cli("pull", "--lock", str(dest / "neffcache.lock.json"), "--dest", str(other),
                  "--runtime-version", NEURON_RUNTIME)
    assert by_lock.rc == 0, by_lock.stderr
    neff = next(f for f in decoder["files"] if f["name"] == "model.neff")
    assert hashlib.sha256((other / "by-name" / "decoder-b1" / "model.neff").read_bytes()).hexdigest() == neff["sha256"]

    # A name that is not a plain folder name is refused before anything is written.
    bad = write_yaml(tmp_path / "bad.yaml", [{**_entries(spec_file)[0], "name": "../escape"}])
    refused = cli("pull", "--spec", str(bad), "--dest", str(tmp_path / "refused"), "--runtime-version", NEURON_RUNTIME)
    assert refused.rc == 2 and "'../escape'" in refused.one_line_error()
    assert not (tmp_path / "refused").exists()


def _entries(spec_file: Path) -> list[dict[str, Any]]:
    import yaml

    return yaml.safe_load(spec_file.read_text())


def test_a_failed_pull_leaves_dest_exactly_as_it_found_it(cli, api: httpx.Client, stack_settings: dict[str, Any],
                                                          storage_kind: str, tmp_path: Path) -> None:
    good_data, good = published(api)
    bad_data, bad = published(api)
    earlier = _named_specs(tmp_path, {"good": good_data})
    both = _named_specs(tmp_path, {"good": good_data, "bad": bad_data})
    dest = tmp_path / "neffs"
    assert cli("pull", "--spec", str(earlier), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME).rc == 0
    before = snapshot(dest)
    assert before and any(k.startswith("by-name") for k in before)

    neff = next(f for f in bad["files"] if f["name"] == "model.neff")
    store = open_store(Settings(**stack_settings))
    original = store.open(neff["sha256"]).read()
    overwrite_stored_bytes(store, neff["sha256"], original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        # Into a DEST that held an earlier good pull: nothing added, nothing changed.
        r = cli("pull", "--spec", str(both), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, "--json")
        assert r.rc == 5, (r.stdout, r.stderr)
        assert r.json()["error"] == CORRUPTION_FOUND_BY[storage_kind] and neff["sha256"] in r.one_line_error()
        assert snapshot(dest) == before
        # Into a DEST that did not exist: it still does not (no compile.log, no empty key folder).
        fresh = tmp_path / "fresh" / "neffs"
        r = cli("pull", bad["key"], good["key"], "--dest", str(fresh), "--runtime-version", NEURON_RUNTIME)
        assert r.rc == 5, r.stderr
        assert not (tmp_path / "fresh").exists()
    finally:
        overwrite_stored_bytes(store, neff["sha256"], original)
    # Repaired, the same pull lands whole.
    r = cli("pull", "--spec", str(both), "--dest", str(dest), "--runtime-version", NEURON_RUNTIME)
    assert r.rc == 0, r.stderr
    assert (dest / "by-name" / "bad" / "model.neff").read_bytes() == original


# --- authorisation, as the client handles it ---------------------------------------------------
class _Refusing(StubHandler):
    """Answers every request with one fixed error body, and records the Authorization header."""

    status = 401
    seen: list[str | None] = []

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        code = {401: "unauthorized", 403: "forbidden"}[self.status]
        self.send_json(self.status, {"error": code, "detail": f"{code} (test stub)"})


@pytest.fixture
def refusing_server() -> Iterator[tuple[str, type[_Refusing]]]:
    handler = type("Handler", (_Refusing,), {"seen": []})
    with serve(handler) as url:
        yield url, handler


@pytest.mark.parametrize("status, code", [(401, "unauthorized"), (403, "forbidden")])
def test_401_and_403_exit_6_with_one_line_and_the_token_is_sent(refusing_server, status: int, code: str,
                                                                tmp_path: Path) -> None:
    # A stub answering 401/403 stands in until the service's own auth is in this tree; the
    # service's routes are covered by its table-driven auth test.
    url, handler = refusing_server
    handler.status = status
    r = run_cli(["stats"], client_env(url, token="tok-env"))
    assert r.rc == 6 and code in r.one_line_error()
    r = run_cli(["--token", "tok-flag", "pull", "a" * 64, "--dest", str(tmp_path / "d"), "--json"],
                client_env(url, token="tok-env"))
    assert r.rc == 6 and r.json()["error"] == code
    assert handler.seen == ["Bearer tok-env", "Bearer tok-flag"]
    assert not (tmp_path / "d").exists()


def test_no_token_and_a_token_without_the_scope_exit_6(running, tokens: dict[str, str], tmp_path: Path) -> None:
    anonymous = run_cli(["stats"], client_env(running.url))
    assert anonymous.rc == 6 and "NEFFCACHE_TOKEN" in anonymous.one_line_error()
    unknown = run_cli(["ls", "--token", "nfc_not-a-real-token"], client_env(running.url))
    assert unknown.rc == 6 and "NEFFCACHE_TOKEN" in unknown.one_line_error()
    model = tmp_path / "m.hlo.pb"
    model.write_bytes(hlo_model())
    read_only = run_cli(["compile", str(model), "--input", "input_ids=1x128:int64", "--target", "trn1",
                         "--runtime-version", NEURON_RUNTIME, "--json"], client_env(running.url, tokens["read"]))
    assert read_only.rc == 6, read_only.stderr
    assert read_only.json()["error"] == "forbidden"
    read_only.one_line_error()


def _fake_tool(folder: Path, name: str, stdout: str) -> None:
    tool = folder / name
    tool.write_text(f"#!/bin/sh\ncat <<'OUT'\n{stdout}\nOUT\n")
    tool.chmod(0o755)


@pytest.mark.parametrize("tool, output", [
    ("neuron-ls", json.dumps([{"neuron_device": 0, "nc_count": 2, "neuron_processes": [
        {"pid": 4242, "command": "python serve.py", "neuron_runtime_version": "RUNTIME"}]}])),
    ("dpkg-query", "RUNTIME-1a2b3c4d5"),  # a Debian version: the revision is dropped
])
def test_the_local_neuron_runtime_is_detected(cli, api: httpx.Client, tmp_path: Path, tool: str, output: str) -> None:
    # Stand-ins for the host's tools (this machine has no Neuron SDK), printing what the real ones print.
    _, artifact = published(api)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    path = f"{bin_dir}:/usr/bin:/bin"
    _fake_tool(bin_dir, tool, output.replace("RUNTIME", "2.31.7.0"))
    refused = cli("pull", artifact["key"], "--dest", str(tmp_path / "no"), PATH=path)
    assert refused.rc == 5
    assert "2.31.7.0" in refused.one_line_error() and tool in refused.one_line_error()
    assert not (tmp_path / "no").exists()
    _fake_tool(bin_dir, tool, output.replace("RUNTIME", NEURON_RUNTIME))
    accepted = cli("pull", artifact["key"], "--dest", str(tmp_path / "yes"), PATH=path)
    assert accepted.rc == 0, accepted.stderr
    assert (tmp_path / "yes" / artifact["key"] / "model.neff").is_file()
