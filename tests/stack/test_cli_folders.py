"""Compiled-artifact folders through the command against the running stack: `push --dir` publishes
an NxD Inference compiled_model_path whole (every NEFF validated: one bad NEFF publishes nothing),
and `pull --into` restores it on another host byte for byte, atomically: a cut transfer leaves
DIR as it was, and a second pull downloads nothing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import httpx

from neffcache.settings import Settings
from neffcache.storage import open_store
from tests.doubles.neuronx_cc_double import build_neff
from tests.support.api import upload
from tests.support.cli import write_yaml
from tests.support.snapshot import snapshot
from tests.support.tamper import overwrite_stored_bytes

RUNTIME = "2.33.10.0"  # SDK 2.31.1, with the torch-neuronx and neuronx-cc below
BIG = 3 * 1024 * 1024 + 17  # more than the service's 1 MiB chunk: a corrupt copy is cut off mid-way


def nxdi_folder(root: Path, *, bad_neff: bool = False) -> dict[str, bytes]:
    """A folder as NxD Inference's compile() writes compiled_model_path (model.pt, the config and
    weights/tp<rank>_sharded_checkpoint.safetensors), with the NEFFs its ModelBuilder compiles per
    submodel and bucket (<tag>/_tp0_bk<n>/graph.neff, metaneff.pb). Random weights: a key of its own."""
    neff = build_neff({"neff.json": b"{}"}, lnc_size=2)
    tree = {
        "model.pt": os.urandom(64 * 1024),
        "neuron_config.json": b'{"neuron_config": {"tp_degree": 2, "batch_size": 1, "seq_len": 1024}}',
        "weights/tp0_sharded_checkpoint.safetensors": os.urandom(BIG),
        "weights/tp1_sharded_checkpoint.safetensors": os.urandom(BIG),
        "context_encoding_model/_tp0_bk0/graph.neff": neff,
        "context_encoding_model/_tp0_bk0/metaneff.pb": b"metaneff cte",
        "token_generation_model/_tp0_bk0/graph.neff": neff,
        "token_generation_model/_tp0_bk1/graph.neff": neff[:-100] if bad_neff else build_neff({"b1": b"1"}, lnc_size=2),
    }
    for name, data in tree.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return tree


def folder_spec(tmp_path: Path) -> Path:
    """The spec of the folder: the checkpoint it was compiled from, the toolchain, the neuron config."""
    checkpoint = tmp_path / "Llama-3.2-1B"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 16}')
    (checkpoint / "model.safetensors").write_bytes(os.urandom(4096))
    (checkpoint / "tokenizer.json").write_text("{}")  # changes nothing compiled: not in the key
    return write_yaml(tmp_path / "llama.yaml", {
        "name": "llama-tp2",
        "model": {"path": "Llama-3.2-1B", "format": "hf-checkpoint"},
        "target": "trn2",
        "compiler": {"name": "torch-neuronx", "version": "2.9.0.2.15.32035", "torch_version": "2.9.0",
                     "neuronx_cc_version": "2.26.6360.0", "nxd_inference_version": "0.7.15063"},
        "runtime": {"name": "neuron-runtime", "version": RUNTIME},
        "neuron_config": {"tp_degree": 2, "batch_size": 1, "seq_len": 1024, "enable_bucketing": True,
                          "context_encoding_buckets": [1024], "token_generation_buckets": [512, 1024],
                          "logical_nc_config": 2},
    })


def tree_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def push(publisher_cli: Any, folder: Path, spec: Path) -> str:
    r = publisher_cli("push", "--dir", str(folder), "--spec", str(spec), "--json")
    assert r.rc == 0, (r.stdout, r.stderr)
    assert r.json()["status"] == "published"
    return str(r.json()["key"])


def test_a_folder_goes_from_one_host_to_another_byte_identical(publisher_cli, cli, api: httpx.Client,
                                                                tmp_path: Path) -> None:
    host_a, host_b = tmp_path / "a", tmp_path / "b"
    host_a.mkdir()
    host_b.mkdir()
    tree = nxdi_folder(host_a / "compiled")
    spec = folder_spec(host_a)
    key = push(publisher_cli, host_a / "compiled", spec)
    artifact = api.get(f"/v1/artifacts/{key}").json()
    assert {f["name"] for f in artifact["files"]} == set(tree)
    neffs = {f["name"]: f["neff"] for f in artifact["files"] if f["name"].endswith(".neff")}
    assert len(neffs) == 3 and {n["lnc_size"] for n in neffs.values()} == {2}  # every NEFF validated
    assert artifact["manifest"]["neuron_config"]["tp_degree"] == 2
    assert artifact["manifest"]["compiler"]["nxd_inference_version"] == "0.7.15063"
    again = publisher_cli("push", "--dir", str(host_a / "compiled"), "--spec", str(spec))
    assert again.rc == 0 and "already published with these files" in again.stderr, again.stderr

    # Host B: by the spec, by key, by a lock file; each gives the same bytes under DIR.
    into = host_b / "models" / "llama"
    pulled = cli("pull", "--spec", str(spec), "--into", str(into), "--runtime-version", RUNTIME, "--json")
    assert pulled.rc == 0, pulled.stderr
    assert {f["status"] for f in pulled.json()["files"]} == {"downloaded"}
    assert tree_of(into) == tree and os.listdir(host_b / "models") == ["llama"]  # nothing left beside it
    # Each file came through the artifact's own route, by its path: counted as a download.
    assert api.get(f"/v1/artifacts/{key}").json()["downloads"] == len(tree)

    before = snapshot(into)
    second = cli("pull", key[:12], "--into", str(into), "--runtime-version", RUNTIME, "--json")
    assert second.rc == 0, second.stderr
    assert {f["status"] for f in second.json()["files"]} == {"present"} and snapshot(into) == before

    lock = host_b / "deploy.lock.json"
    assert cli("lock", "--spec", str(spec), "-o", str(lock)).rc == 0
    by_lock = cli("pull", "--lock", str(lock), "--into", str(host_b / "by-lock"), "--runtime-version", RUNTIME)
    assert by_lock.rc == 0, by_lock.stderr
    assert tree_of(host_b / "by-lock") == tree

    # Its paths have no place under DEST/<key>/: the refusal says where it goes.
    dest = cli("pull", key, "--dest", str(host_b / "neffs"), "--runtime-version", RUNTIME)
    assert dest.rc == 5 and "pull it with --into DIR" in dest.one_line_error()
    assert not (host_b / "neffs").exists()


def test_a_folder_with_an_invalid_neff_publishes_nothing(publisher_cli, cli, api: httpx.Client,
                                                         tmp_path: Path) -> None:
    tree = nxdi_folder(tmp_path / "compiled", bad_neff=True)
    spec = folder_spec(tmp_path)
    r = publisher_cli("push", "--dir", str(tmp_path / "compiled"), "--spec", str(spec))
    assert r.rc == 5, (r.stdout, r.stderr)
    line = r.one_line_error()  # refused before any upload: nothing else was said
    assert "token_generation_model/_tp0_bk1/graph.neff is not a valid NEFF" in line, line
    miss = cli("pull", "--spec", str(spec), "--into", str(tmp_path / "pulled"), "--runtime-version", RUNTIME)
    assert miss.rc == 4 and not (tmp_path / "pulled").exists()

    # The service refuses it too, whoever sends it: 422 naming the path, and nothing published.
    from neffcache.client.specs import load_spec_file

    entry = load_spec_file(spec)[0]
    model = (tmp_path / "Llama-3.2-1B")
    index = {"config.json": model / "config.json", "model.safetensors": model / "model.safetensors"}
    body = {"checkpoint_index": 1, "files": {n: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
                                             for n, p in index.items()}}
    entry.spec["model"]["digest"] = upload(api, json.dumps(body, sort_keys=True, separators=(",", ":")).encode())
    files = [{"name": name, "digest": upload(api, data)} for name, data in tree.items()]
    refused = api.post("/v1/artifacts", json={"spec": entry.spec, "files": files})
    assert refused.status_code == 422 and refused.json()["error"] == "invalid_neff", refused.text
    assert "token_generation_model/_tp0_bk1/graph.neff" in refused.json()["detail"]
    assert api.post("/v1/lookup", json={"spec": entry.spec}).status_code == 404


def test_a_folder_holding_what_cannot_be_published_is_refused_before_any_upload(publisher_cli, api: httpx.Client,
                                                                                tmp_path: Path) -> None:
    tree = nxdi_folder(tmp_path / "compiled")
    (tmp_path / "compiled" / "weights" / "latest").symlink_to("tp0_sharded_checkpoint.safetensors")
    r = publisher_cli("push", "--dir", str(tmp_path / "compiled"), "--spec", str(folder_spec(tmp_path)))
    assert r.rc == 2 and "weights/latest is a symbolic link" in r.one_line_error()
    model_pt = hashlib.sha256(tree["model.pt"]).hexdigest()
    assert api.head(f"/v1/blobs/sha256:{model_pt}").status_code == 404  # nothing was uploaded


def test_a_pull_cut_halfway_leaves_dir_as_it_was(publisher_cli, cli, tmp_path: Path,
                                                 stack_settings: dict[str, Any]) -> None:
    tree = nxdi_folder(tmp_path / "compiled")
    spec = folder_spec(tmp_path)
    key = push(publisher_cli, tmp_path / "compiled", spec)
    into = tmp_path / "pod" / "llama"
    old = {"model.pt": b"the previous build", "neuron_config.json": b"{}"}
    for name, data in old.items():
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(data)
    before = snapshot(tmp_path / "pod")

    # One weight shard's stored copy altered in its middle: the service cuts its transfer off there.
    shard = tree["weights/tp1_sharded_checkpoint.safetensors"]
    sha = hashlib.sha256(shard).hexdigest()
    store = open_store(Settings(**stack_settings))
    middle = len(shard) // 2
    overwrite_stored_bytes(store, sha, shard[:middle] + bytes([shard[middle] ^ 0x01]) + shard[middle + 1:])
    try:
        for dest in (into, tmp_path / "fresh" / "llama"):
            r = cli("pull", key, "--into", str(dest), "--runtime-version", RUNTIME)
            assert r.rc == 5, (r.stdout, r.stderr)
            assert "tp1_sharded_checkpoint.safetensors" in r.one_line_error() and sha in r.stderr
        assert snapshot(tmp_path / "pod") == before  # the old DIR as it was, nothing beside it
        assert not (tmp_path / "fresh").exists()  # a new one not even begun
    finally:
        overwrite_stored_bytes(store, sha, shard)
    # Repaired, the same pull replaces the old DIR whole.
    assert cli("pull", key, "--into", str(into), "--runtime-version", RUNTIME).rc == 0
    assert tree_of(into) == tree and os.listdir(tmp_path / "pod") == ["llama"]


def test_the_farm_refuses_to_build_a_folder_and_answers_a_pushed_one_as_a_hit(publisher_cli, cli,
                                                                             tmp_path: Path) -> None:
    nxdi_folder(tmp_path / "compiled")
    spec = folder_spec(tmp_path)
    refused = cli("compile", "--spec", str(spec))
    # (after the line saying the checkpoint's index was uploaded)
    assert refused.rc == 2 and "neffcache push --dir" in refused.stderr.splitlines()[-1], refused.stderr
    key = push(publisher_cli, tmp_path / "compiled", spec)
    hit = cli("compile", "--spec", str(spec), "--json")
    assert hit.rc == 0, hit.stderr
    assert hit.json()["results"][0]["status"] == "hit" and hit.json()["results"][0]["key"] == key, hit.stdout
