"""The libneuronxla persistent cache through the `neffcache` command: compile its uncompiled graphs on
the farm, push what a host already compiled, and restore entries into an empty cache folder.

The cache folders are laid out by the tests exactly as libneuronxla lays them out:
`neuronxcc-<version+build>/MODULE_<graph key>+<flags hash>/` with `model.hlo_module.pb` (older:
`model.hlo.pb`), `compile_flags.json`, and for a compiled graph `model.neff` and `model.done`.
Only the neuronx-cc test double compiles (version 2.27.5334.0+2d6a2ba2b, SDK 2.32.0); the
entries of another compiler version are the "already compiled on a host" ones.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import httpx

from tests.doubles.neuronx_cc_double import DEFAULT_VERSION, build_neff
from tests.support.api import NEURON_RUNTIME, hlo_model, published

DOUBLE_VERSION = DEFAULT_VERSION  # "2.27.5334.0+2d6a2ba2b": the only compiler with a worker
OLD_VERSION = "2.26.6360.0+0a1b2c3d4"  # SDK 2.31.x; no worker has it
OLD_RUNTIME = "2.33.10.0"  # the runtime of SDK 2.31.x
ANNOTATIONS = ("neuron_cache.module", "neuron_cache.compiler_dir", "neuron_cache.compile_flags")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_entry(root: Path, version: str, flags: list[str], *, hlo: bytes | None = None, neff: bytes | None = None,
               done: bool | None = None, hlo_name: str = "model.hlo_module.pb") -> Path:
    """One MODULE_ folder as libneuronxla writes it: MODULE_<graph key>+<first 8 hex of md5 of the flags>."""
    flags_text = json.dumps(flags)
    module = f"MODULE_{random.getrandbits(63)}+{hashlib.md5(flags_text.encode()).hexdigest()[:8]}"
    folder = root / f"neuronxcc-{version}" / module
    folder.mkdir(parents=True)
    (folder / hlo_name).write_bytes(hlo if hlo is not None else hlo_model())
    (folder / "compile_flags.json").write_text(flags_text)
    if neff is not None:
        (folder / "model.neff").write_bytes(neff)
    if done if done is not None else neff is not None:
        (folder / "model.done").write_bytes(b"")
    return folder


def host_neff(version: str = OLD_VERSION, **fields: Any) -> bytes:
    """A NEFF as a host's own compile left it (unique bytes each call)."""
    return build_neff({"neff.json": json.dumps({"host": random.getrandbits(64)}).encode()},
                      neff_build_version=version, **fields)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (relative path -> bytes), temp files included."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def entry_of(folder: Path) -> str:
    return f"{folder.parent.name}/{folder.name}"


def test_compile_push_and_pull_into_an_empty_cache_reproduce_the_layout(publisher_cli, api: httpx.Client, running,
                                                                        tmp_path: Path) -> None:
    cache = tmp_path / "neuron-compile-cache"
    # Graphs extracted but not compiled (what NEURON_EXTRACT_GRAPHS_ONLY=1 leaves), on the double's compiler.
    uncompiled = [
        make_entry(cache, DOUBLE_VERSION, ["--target=trn1", "--model-type=transformer", "-O1"]),
        make_entry(cache, DOUBLE_VERSION, ["--target", "trn1", "--auto-cast=none"], hlo_name="model.hlo.pb"),
        make_entry(cache, DOUBLE_VERSION, ["--model-type=transformer", "--enable-saturate-infinity"]),
    ]
    # A graph a host already compiled, with a compiler no worker has.
    compiled = make_entry(cache, OLD_VERSION, ["--target=trn1", "-O2"], neff=host_neff())
    (cache / "neuronxcc-2.27.5334.0+2d6a2ba2b.lock").write_text("")  # libneuronxla's own clutter: ignored
    (cache / "other-folder").mkdir()
    original = tree(cache)

    # No --target and one entry's flags name none: refused, naming it, before anything is sent.
    jobs_before = {j["id"] for j in api.get("/v1/jobs", params={"limit": 500}).json()["jobs"]}
    no_target = publisher_cli("compile", "--from-neuron-cache", str(cache), "--json")
    assert no_target.rc == 2, (no_target.stdout, no_target.stderr)
    assert entry_of(uncompiled[2]) in no_target.one_line_error() and "--target" in no_target.one_line_error()
    assert {j["id"] for j in api.get("/v1/jobs", params={"limit": 500}).json()["jobs"]} == jobs_before

    inputs_log = Path(str(running.double_record) + ".inputs")
    compiled_before = inputs_log.read_text().split() if inputs_log.exists() else []
    done = publisher_cli("compile", "--from-neuron-cache", str(cache), "--target", "trn1", "--wait", "--timeout",
                         "120", "--json", timeout=200)
    assert done.rc == 0, (done.stdout, done.stderr)
    body = done.json()
    assert body["skipped"] == [{"entry": entry_of(compiled), "reason": "already compiled (model.neff and model.done)"}]
    results = {r["entry"]: r for r in body["results"]}
    assert set(results) == {entry_of(f) for f in uncompiled}  # exactly the uncompiled ones
    keys = {}
    for folder in uncompiled:
        r = results[entry_of(folder)]
        assert r["status"] == "succeeded", r
        hlo = next(p for p in folder.iterdir() if p.name.startswith("model.hlo"))
        flags_text = (folder / "compile_flags.json").read_text()
        assert r["spec"]["model"] == {"format": "hlo", "digest": "sha256:" + sha(hlo.read_bytes())}
        assert r["spec"]["inputs"] == [] and r["spec"]["target"] == "trn1"
        assert r["spec"]["compiler"] == {"name": "neuronx-cc", "version": DOUBLE_VERSION,
                                         "flags": json.loads(flags_text)}
        assert r["spec"]["runtime"] == {"name": "neuron-runtime", "version": NEURON_RUNTIME}  # paired by the service
        job = api.get(f"/v1/jobs/{r['job']['id']}").json()
        assert job["annotations"] == {"neuron_cache.module": folder.name,
                                      "neuron_cache.compiler_dir": folder.parent.name,
                                      "neuron_cache.compile_flags": flags_text,
                                      "neuron_cache.hlo_file": hlo.name}
        artifact = api.get(f"/v1/artifacts/{r['key']}").json()
        assert {k: artifact["annotations"][k] for k in ANNOTATIONS} == {k: job["annotations"][k] for k in ANNOTATIONS}
        keys[entry_of(folder)] = r["key"]
    # The farm ran the compiler once per uncompiled graph, and never on the compiled one's HLO.
    new_inputs = inputs_log.read_text().split()[len(compiled_before):]
    assert sorted(new_inputs) == sorted(sha(next(p for p in f.iterdir() if p.name.startswith("model.hlo")).read_bytes())
                                        for f in uncompiled)

    # Again: every one is a hit now, and nothing new is compiled.
    again = publisher_cli("compile", "--from-neuron-cache", str(cache), "--target", "trn1", "--json")
    assert again.rc == 0 and {r["status"] for r in again.json()["results"]} == {"hit"}

    # A runtime of another SDK release than the compiler's is refused for that entry (exit 2).
    mismatched = publisher_cli("push", "--from-neuron-cache", str(cache), "--runtime-version", NEURON_RUNTIME, "--json")
    assert mismatched.rc == 2, (mismatched.stdout, mismatched.stderr)
    [refused] = mismatched.json()["results"]
    assert refused["status"] == "refused" and refused["error"] == "toolchain_mismatch"
    assert entry_of(compiled) in mismatched.stderr.strip().splitlines()[-1]

    # push: the compiled entry is published; no worker of its compiler is needed, and the service
    # pairs it with the runtime of the compiler's SDK release.
    pushed = publisher_cli("push", "--from-neuron-cache", str(cache), "--json")
    assert pushed.rc == 0, (pushed.stdout, pushed.stderr)
    [p] = pushed.json()["results"]
    assert p["entry"] == entry_of(compiled) and p["status"] == "published"
    assert p["neff"]["neff_build_version"] == OLD_VERSION
    assert {s["entry"] for s in pushed.json()["skipped"]} == {entry_of(f) for f in uncompiled}
    artifact = api.get(f"/v1/artifacts/{p['key']}").json()
    assert artifact["manifest"]["compiler"]["version"] == OLD_VERSION
    assert artifact["manifest"]["runtime"]["version"] == OLD_RUNTIME
    assert [(f["name"], f["sha256"]) for f in artifact["files"]] == [
        ("model.neff", sha((compiled / "model.neff").read_bytes()))]
    assert artifact["annotations"]["neuron_cache.module"] == compiled.name
    assert artifact["annotations"]["neuron_cache.compile_flags"] == (compiled / "compile_flags.json").read_text()
    again = publisher_cli("push", "--from-neuron-cache", str(cache))
    assert again.rc == 0 and "already published" in again.stdout

    # pull --into-neuron-cache, into an empty folder: the same layout comes back. A pod runs one
    # runtime, so the entries of each runtime come in their own pull (here one by a lock file).
    restored = tmp_path / "pod-cache"
    lock = tmp_path / "deploy.lock.json"
    locked = publisher_cli("lock", *keys.values(), "--output", str(lock))
    assert locked.rc == 0, locked.stderr
    first = publisher_cli("pull", "--lock", str(lock), "--into-neuron-cache", str(restored), "--runtime-version",
                          NEURON_RUNTIME, "--json")
    assert first.rc == 0, (first.stdout, first.stderr)
    assert {a["entry"] for a in first.json()["artifacts"]} == set(keys)
    second = publisher_cli("pull", p["key"], "--into-neuron-cache", str(restored), "--runtime-version", OLD_RUNTIME)
    assert second.rc == 0, second.stderr
    assert "restored 1 entry" in second.stderr

    got = tree(restored)
    assert not [name for name in got if Path(name).name.startswith(".")]  # no temp files left behind
    entries = [f for f in [*uncompiled, compiled]]
    expected_files = {entry_of(f) + "/" + name for f in entries
                      for name in ("compile_flags.json", "model.neff", "model.done",
                                   next(p.name for p in f.iterdir() if p.name.startswith("model.hlo")))}
    assert set(got) == expected_files  # every entry, each with model.done, and nothing else
    for name, data in original.items():
        if name.count("/") == 2:  # the entries' files: byte-identical (the host's NEFF included)
            assert got[name] == data, name
    for entry, key in keys.items():  # the farm's NEFFs: the published bytes
        neff = next(f for f in api.get(f"/v1/artifacts/{key}").json()["files"] if f["name"] == "model.neff")
        assert sha(got[f"{entry}/model.neff"]) == neff["sha256"]

    # Run again (a restarted pod): everything is already there.
    rerun = publisher_cli("pull", "--lock", str(lock), "--into-neuron-cache", str(restored), "--runtime-version",
                          NEURON_RUNTIME, "--json")
    assert rerun.rc == 0 and {a["status"] for a in rerun.json()["artifacts"]} == {"present"}
    # A damaged NEFF is restored, and the entry is marked done again only after it.
    damaged = restored / next(iter(keys)) / "model.neff"
    damaged.write_bytes(b"half a neff")
    repaired = publisher_cli("pull", "--lock", str(lock), "--into-neuron-cache", str(restored), "--runtime-version",
                             NEURON_RUNTIME, "--json")
    assert repaired.rc == 0, repaired.stderr
    assert sorted(a["status"] for a in repaired.json()["artifacts"]) == ["present", "present", "restored"]
    assert tree(restored) == got


def test_push_refuses_an_invalid_neff_and_still_publishes_the_valid_ones(publisher_cli, api: httpx.Client,
                                                                         tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    good = make_entry(cache, OLD_VERSION, ["--target=inf2"], neff=host_neff())
    bad_hlo = hlo_model()
    bad = make_entry(cache, OLD_VERSION, ["--target=inf2"], hlo=bad_hlo, neff=host_neff()[:-100])  # truncated
    half = make_entry(cache, OLD_VERSION, ["--target=inf2"], neff=host_neff(), done=False)  # still being written
    r = publisher_cli("push", "--from-neuron-cache", str(cache), "--json")
    assert r.rc == 5, (r.stdout, r.stderr)
    results = {x["entry"]: x for x in r.json()["results"]}
    assert set(results) == {entry_of(good), entry_of(bad)}
    assert results[entry_of(good)]["status"] == "published"
    assert results[entry_of(bad)]["status"] == "invalid" and "data_size" in results[entry_of(bad)]["detail"]
    assert r.json()["skipped"] == [{"entry": entry_of(half),
                                    "reason": "model.neff without model.done (a compile in progress, or interrupted)"}]
    last = r.stderr.strip().splitlines()[-1]
    assert entry_of(bad) in last and "model.neff" in last and "Traceback" not in r.stderr
    # Nothing of the invalid one reached the service.
    assert api.get("/v1/artifacts", params={"model": "sha256:" + sha(bad_hlo)}).json()["artifacts"] == []
    assert api.head(f"/v1/blobs/sha256:{sha((bad / 'model.neff').read_bytes())}").status_code == 404

    human = publisher_cli("push", "--from-neuron-cache", str(cache))
    assert human.rc == 5 and "already published" in human.stdout and "invalid NEFF" in human.stdout


def test_lnc_of_the_pod_must_match_the_neff(publisher_cli, api: httpx.Client, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    make_entry(cache, OLD_VERSION, ["--target=trn2", "-lnc", "2"], neff=host_neff(lnc_size=2, feature_bits=5))
    pushed = publisher_cli("push", "--from-neuron-cache", str(cache), "--json")
    assert pushed.rc == 0, pushed.stderr
    key = pushed.json()["results"][0]["key"]

    shown = publisher_cli("show", key)
    assert shown.rc == 0, shown.stderr
    neff_row = next(line for line in shown.stdout.splitlines() if "model.neff" in line and OLD_VERSION in line)
    assert " 2.0 " in neff_row and " 2 " in neff_row and "0x5" in neff_row  # neff_version, lnc_size, feature_bits
    assert "neuron_cache.module" in shown.stdout and "MODULE_" in shown.stdout
    neff = shown_json = publisher_cli("show", key, "--json").json()
    neff = shown_json["files"][0]["neff"]
    assert neff["lnc_size"] == 2 and neff["feature_bits"] == 5 and neff["neff_version"] == "2.0"

    for option in ("--dest", "--into-neuron-cache"):
        dest = tmp_path / f"pod{option}"
        refused = publisher_cli("pull", key, option, str(dest), "--runtime-version", OLD_RUNTIME, "--json",
                                NEURON_LOGICAL_NC_CONFIG="1")
        assert refused.rc == 5, (option, refused.stdout, refused.stderr)
        line = refused.one_line_error()
        assert "model.neff" in line and "lnc_size 2" in line and "NEURON_LOGICAL_NC_CONFIG=1" in line
        assert refused.json()["error"] == "runtime_mismatch"
        assert not dest.exists()
        ok = publisher_cli("pull", key, option, str(dest), "--runtime-version", OLD_RUNTIME,
                           NEURON_LOGICAL_NC_CONFIG="2")
        assert ok.rc == 0, ok.stderr
    bad_env = publisher_cli("pull", key, "--dest", str(tmp_path / "x"), "--runtime-version", OLD_RUNTIME,
                            NEURON_LOGICAL_NC_CONFIG="two")
    assert bad_env.rc == 2 and "NEURON_LOGICAL_NC_CONFIG" in bad_env.one_line_error()


def test_what_a_neuron_cache_pull_and_compile_refuse(publisher_cli, api: httpx.Client, tmp_path: Path) -> None:
    # An artifact compiled from a spec, not from a cache entry: it has no place in a cache folder.
    _, artifact = published(api)
    dest = tmp_path / "pod-cache"
    r = publisher_cli("pull", artifact["key"], "--into-neuron-cache", str(dest), "--runtime-version", NEURON_RUNTIME)
    assert r.rc == 2 and artifact["key"] in r.one_line_error() and "neuron_cache.module" in r.one_line_error()
    assert not dest.exists()
    # A miss among the keys: nothing written either.
    miss = publisher_cli("pull", artifact["key"], "f" * 64, "--into-neuron-cache", str(dest), "--runtime-version",
                         NEURON_RUNTIME)
    assert miss.rc == 4 and "f" * 64 in miss.one_line_error() and not dest.exists()

    assert publisher_cli("pull", artifact["key"], "--dest", str(tmp_path / "a"), "--into-neuron-cache",
               str(dest)).rc == 2
    missing = publisher_cli("compile", "--from-neuron-cache", str(tmp_path / "nowhere"))
    assert missing.rc == 2 and "no such folder" in missing.one_line_error()
    empty = tmp_path / "empty"
    empty.mkdir()
    pushed_nothing = publisher_cli("push", "--from-neuron-cache", str(empty))
    assert "holds no libneuronxla cache entries" in pushed_nothing.one_line_error()
    mixed = publisher_cli("compile", "--from-neuron-cache", str(empty), "--flag=-O2")
    assert mixed.rc == 2 and "--flag" in mixed.one_line_error()

    cache = tmp_path / "cache"
    only_done = make_entry(cache, OLD_VERSION, ["--target=trn1"], neff=host_neff())
    nothing = publisher_cli("compile", "--from-neuron-cache", str(cache), "--json")
    assert nothing.rc == 0 and nothing.json()["results"] == []
    assert nothing.json()["skipped"][0]["entry"] == entry_of(only_done)
    disagree = make_entry(cache, DOUBLE_VERSION, ["--target=trn1"])
    conflict = publisher_cli("compile", "--from-neuron-cache", str(cache), "--target", "inf2")
    assert conflict.rc == 2 and entry_of(disagree) in conflict.one_line_error()
    (disagree / "compile_flags.json").write_text("--target=trn1")  # not JSON
    broken = publisher_cli("compile", "--from-neuron-cache", str(cache))
    assert broken.rc == 2 and "compile_flags.json" in broken.one_line_error()


def test_toolchains_lists_releases_and_live_workers(cli) -> None:
    r = cli("toolchains", "--json")
    assert r.rc == 0, r.stderr
    body = r.json()
    by_sdk = {x["sdk"]: x for x in body["releases"]}
    assert by_sdk["2.32.0"]["neuronx_cc"] == ["2.27.5334.0"] and by_sdk["2.32.0"]["runtime"] == [NEURON_RUNTIME]
    assert by_sdk["2.32.0"]["live_workers"] >= 1 and by_sdk["2.31.0"]["live_workers"] == 0
    live = {t["compiler"]: t for t in body["live"]}
    assert live[f"neuronx-cc=={DOUBLE_VERSION}"]["sdk_releases"] == ["2.32.0"]
    human = cli("toolchains")
    assert human.rc == 0 and "2.32.0" in human.stdout and "2.34.10.0" in human.stdout
    assert f"neuronx-cc=={DOUBLE_VERSION}" in human.stdout
