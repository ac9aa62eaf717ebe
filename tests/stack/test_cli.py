"""The `neffcache` command end to end, as a subprocess against the running stack.

Each call runs `python -m neffcache.client.cli` (what the `neffcache` console script runs) with
NEFFCACHE_URL pointing at the test service, and checks the exit code, stdout (parsed with
--json) and stderr (one line, never a traceback).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from neffcache.db.models import Job, utcnow
from neffcache.settings import Settings
from neffcache.storage import open_store
from tests.support.api import NEURON_RUNTIME, SAMPLE_MANIFEST, hlo_model, neuron_spec, upload, wait_job
from tests.support.cli import client_env, run_cli, write_yaml
from tests.support.tamper import overwrite_stored_bytes


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lookup_hits(body: dict) -> int:
    """An artifact's or the stats' lookup hits (`hits` from a service that does not name them apart)."""
    return body.get("lookup_hits", body.get("hits"))


# --- the inductor backend, end to end ----------------------------------------------------------
def test_compile_wait_lookup_pull_stats_hits_on_inductor(cli, running, tmp_path: Path) -> None:
    import importlib.metadata

    from tests.support.models import save_tiny_exported_model

    project = tmp_path / "ci"
    save_tiny_exported_model(project / "graphs" / "mlp.pt2", batch=2, features=12, seed=23)
    spec_file = write_yaml(project / "neffs.yaml", [{
        "name": "mlp-b2",
        "model": {"path": "graphs/mlp.pt2"},  # relative to the spec file, not to the cwd
        "inputs": ["x=2x12:float32"],
        "target": "cpu",
        "compiler": {"name": "inductor"},
    }])

    before = cli("stats", "--json").json()
    compiled = cli("compile", "--spec", str(spec_file), "--wait", "--timeout", "400", "--json", cwd=tmp_path,
                   timeout=450)
    assert compiled.rc == 0, compiled.stderr
    [result] = compiled.json()["results"]
    assert result["status"] == "succeeded" and result["name"] == "mlp-b2", result
    key = result["key"]
    torch_version = importlib.metadata.version("torch")
    assert result["spec"]["runtime"] == {"name": "torch", "version": torch_version}
    assert {f["name"] for f in result["artifact"]["files"]} >= {"model.pt2"}

    again = cli("compile", "--spec", str(spec_file), "--json")
    assert again.rc == 0 and again.json()["results"][0]["status"] == "hit"
    human = cli("compile", "--spec", str(spec_file))
    assert human.rc == 0 and key in human.stdout and "hit" in human.stdout

    looked = cli("lookup", "--spec", str(spec_file), "--json")
    assert looked.rc == 0, looked.stderr
    assert looked.json()["results"][0]["status"] == "hit" and looked.json()["results"][0]["key"] == key

    dest = tmp_path / "neffs"
    lock = dest / "neffcache.lock.json"  # every pull into --dest records what it pulled there
    # The local torch is the runtime: detected from its package metadata, no flag needed.
    pulled = cli("pull", "--spec", str(spec_file), "--dest", str(dest), "--json")
    assert pulled.rc == 0, pulled.stderr
    assert pulled.json()["lock"] == str(lock)
    [artifact] = pulled.json()["artifacts"]
    assert artifact["key"] == key and artifact["runtime"]["version"] == torch_version
    for f in artifact["files"]:
        path = dest / key / f["name"]
        assert f["status"] == "downloaded" and Path(f["path"]) == path
        assert sha256_hex(path) == f["sha256"] and path.stat().st_size == f["size"]
    assert not [p for p in (dest / key).iterdir() if p.name.startswith(".")]  # no temp files left
    locked = json.loads(lock.read_text())
    assert locked["lock_version"] == 1 and locked["artifacts"][0]["key"] == key
    assert locked["artifacts"][0]["names"] == ["mlp-b2"]
    assert {(f["name"], f["digest"]) for f in locked["artifacts"][0]["files"]} == {
        (f["name"], "sha256:" + f["sha256"]) for f in artifact["files"]
    }

    # A restarted pod resumes: files already there with the right digest are not fetched again.
    again = cli("pull", key, "--dest", str(dest), "--json")
    assert again.rc == 0, again.stderr
    assert {f["status"] for f in again.json()["artifacts"][0]["files"]} == {"present"}

    after = cli("stats", "--json").json()
    assert after["lookups"] - before["lookups"] >= 5  # compile x3, lookup, pull's lookup
    assert lookup_hits(after) - lookup_hits(before) >= 4
    assert after["downloads"] - before["downloads"] == len(artifact["files"])
    assert after["compile_seconds_saved"] > before["compile_seconds_saved"]
    assert f"inductor=={torch_version}" in after["by_compiler"]
    human_stats = cli("stats")
    assert human_stats.rc == 0 and "hit rate" in human_stats.stdout and "lookup hits" in human_stats.stdout

    shown = cli("show", key, "--json")
    assert shown.rc == 0 and shown.json()["key"] == key and lookup_hits(shown.json()) >= 4
    human_show = cli("show", key)
    assert human_show.rc == 0 and "lookup hits" in human_show.stdout and "downloads" in human_show.stdout
    listed = cli("ls", "--model", str(project / "graphs" / "mlp.pt2"), "--json")
    assert [a["key"] for a in listed.json()["artifacts"]] == [key]
    assert key in cli("ls", "--target", "cpu", "--compiler", "inductor").stdout

    hits = cli("hits", key, "--json")
    assert hits.rc == 0, hits.stderr
    mine = [h for h in hits.json()["hits"] if h["key"] == key]
    assert {h["kind"] for h in mine} >= {"compile", "lookup", "download"}
    assert all(h["outcome"] == "hit" for h in mine)
    assert all(h["caller"] for h in mine)  # attributed to the token's name
    by_caller = cli("hits", "--caller", mine[0]["caller"], "--json").json()["hits"]
    assert by_caller and {h["caller"] for h in by_caller} == {mine[0]["caller"]}
    human_hits = cli("hits", key)
    assert human_hits.rc == 0 and "download" in human_hits.stdout


# --- the neuronx-cc double: the other commands -------------------------------------------------
def test_compile_from_flags_wait_and_logs(cli, tmp_path: Path) -> None:
    model = tmp_path / "model.hlo.pb"
    model.write_bytes(hlo_model())
    args = ["compile", str(model), "--input", "input_ids=1x128:int64", "--target", "trn1",
            "--runtime-version", NEURON_RUNTIME, "--flag=-O2"]
    first = cli(*args, "--wait", "--json")
    assert first.rc == 0, first.stderr
    [result] = first.json()["results"]
    assert result["status"] == "succeeded"
    assert result["spec"]["compiler"]["flags"] == ["-O2"] and result["spec"]["model"]["format"] == "hlo"
    job_id = result["job"]["id"]
    # The model was uploaded by the first call; a person sees the key and "hit" the second time.
    second = cli(*args)
    assert second.rc == 0 and result["key"] in second.stdout and "hit" in second.stdout

    log = cli("logs", job_id)
    assert log.rc == 0 and "Compiler status PASS" in log.stdout
    followed = cli("logs", job_id, "--follow", "--json")
    assert followed.rc == 0 and followed.json()["state"] == "succeeded"

    jobs = cli("jobs", "--state", "succeeded", "--limit", "500", "--json")
    assert job_id in {j["id"] for j in jobs.json()["jobs"]}
    human_jobs = cli("jobs", "--limit", "5")
    assert human_jobs.rc == 0 and "state" in human_jobs.stdout

    workers = cli("workers", "--json")
    compilers = {w["toolchain"]["compiler_name"] for w in workers.json()["workers"] if w["state"] != "stopped"}
    assert {"inductor", "neuronx-cc"} <= compilers
    assert "neuronx-cc==" in cli("workers").stdout

    finished = cli("cancel", job_id)
    assert finished.rc == 2 and "already ended" in finished.one_line_error()


def test_failed_compile_exits_1_and_is_remembered_until_forced(cli, tmp_path: Path) -> None:
    model = tmp_path / "bad.hlo.pb"
    model.write_bytes(hlo_model("double:fail"))
    args = ["compile", str(model), "--input", "input_ids=1x128:int64", "--target", "trn1",
            "--runtime-version", NEURON_RUNTIME]
    waited = cli(*args, "--wait")
    assert waited.rc == 1, (waited.stdout, waited.stderr)
    assert "compile_error" in waited.stdout and "failed" in waited.stderr
    remembered = cli(*args, "--json")
    assert remembered.rc == 1 and remembered.json()["results"][0]["status"] == "failed"
    job_id = remembered.json()["results"][0]["job"]["id"]
    followed = cli("logs", job_id, "--follow")
    assert followed.rc == 1 and "compilation failed" in followed.stdout
    forced = cli(*args, "--force", "--json")
    assert forced.rc == 0 and forced.json()["results"][0]["status"] == "queued"
    assert forced.json()["results"][0]["job"]["id"] != job_id


def test_wait_timeout_exits_3_and_cancel_stops_the_job(cli, tmp_path: Path) -> None:
    model = tmp_path / "slow.hlo.pb"
    # Longer than the double's compile timeout (DOUBLE_COMPILE_TIMEOUT_S): the job stays active
    # through its timed-out attempts (several seconds), however slowly the commands start.
    model.write_bytes(hlo_model("double:sleep=30"))
    spec = write_yaml(tmp_path / "slow.yaml", {
        "model": {"path": model.name}, "inputs": [{"name": "input_ids", "shape": [1, 128], "dtype": "int64"}],
        "target": "trn1", "compiler": {"name": "neuronx-cc"}, "runtime": {"name": "neuron-runtime",
                                                                         "version": NEURON_RUNTIME},
    })
    timed = cli("compile", "--spec", str(spec), "--wait", "--timeout", "0.5", "--poll-interval", "0.1", "--json")
    assert timed.rc == 3, (timed.stdout, timed.stderr)
    assert timed.json()["results"][0]["status"] == "timed_out"  # one JSON document, still parseable
    assert "timed out" in timed.stderr.strip().splitlines()[-1]
    joined = cli("compile", "--spec", str(spec), "--json")
    [r] = joined.json()["results"]
    assert r["status"] == "queued" and r["deduplicated"] is True
    cancelled = cli("cancel", r["job"]["id"], "--json")
    assert cancelled.rc == 0, cancelled.stderr
    assert cancelled.json()["state"] in ("cancelled", "running")
    followed = cli("logs", r["job"]["id"], "--follow", "--poll-interval", "0.2", timeout=60)
    assert followed.rc == 1  # ended cancelled


def test_lookup_miss_shows_the_nearest_manifest_and_the_field(cli, api: httpx.Client, tmp_path: Path) -> None:
    data = hlo_model()
    digest = upload(api, data)
    job = api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()["job"]
    assert wait_job(api, job["id"])["state"] == "succeeded"
    (tmp_path / "m.hlo.pb").write_bytes(data)
    spec = write_yaml(tmp_path / "wider.yaml", {**neuron_spec(digest), "inputs": ["input_ids=1x256:int64"]})
    miss = cli("lookup", "--spec", str(spec), "--json")
    assert miss.rc == 4
    [r] = miss.json()["results"]
    assert r["status"] == "miss"
    assert r["nearest"][0]["differs"] == [{"field": "inputs[0].shape", "wanted": [1, 256], "found": [1, 128]}]
    human = cli("lookup", "--spec", str(spec))
    assert human.rc == 4
    assert "inputs[0].shape" in human.stdout and "[1,256]" in human.stdout and "[1,128]" in human.stdout
    # by flags, with the model given as a file: same miss
    flags = cli("lookup", str(tmp_path / "m.hlo.pb"), "--input", "input_ids=1x256:int64", "--target", "trn1",
                "--runtime-version", NEURON_RUNTIME, "--flag=-O2", "--json")
    assert flags.rc == 4 and flags.json()["results"][0]["key"] == r["key"]


def test_show_and_ls_of_something_missing_exit_4(cli) -> None:
    shown = cli("show", "0" * 64)
    assert shown.rc == 4 and "does not exist" in shown.one_line_error()
    assert cli("ls", "--model", "sha256:" + "1" * 64, "--json").json()["artifacts"] == []
    assert cli("logs", "00000000-0000-4000-8000-000000000000").rc == 4
    malformed = cli("logs", "no-such-job")  # not a job id, nor a prefix of one: the service refuses it
    assert malformed.rc == 2 and "no-such-job" in malformed.one_line_error()


# --- errors a person makes, and a service that is not there ------------------------------------
def test_unreachable_service_exits_6_with_one_line(tmp_path: Path) -> None:
    from tests.support.stack import free_port

    env = client_env(f"http://127.0.0.1:{free_port()}")
    for args in (["stats"], ["pull", "a" * 64, "--dest", str(tmp_path / "d")], ["jobs", "--json"]):
        r = run_cli(args, env)
        assert r.rc == 6, (args, r.stdout, r.stderr)
        assert "cannot reach" in r.one_line_error()
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("content, in_message", [
    ("model: [\n", "not valid YAML at line 2"),
    ("- model: {digest: 'sha256:abc', format: hlo}\n", "model.digest"),
    ("model: {path: missing.pt2}\ninputs: ['x=1x2:float32']\ntarget: cpu\ncompiler: inductor\n", "no such file"),
    ("model: {path: m.bin}\ninputs: ['x=1x2:float33']\ntarget: cpu\ncompiler: inductor\n", "inputs[0].dtype"),
    ("model: {path: m.bin}\ninputs: ['x=1x2:float32']\ntarget: trn1\ncompiler: inductor\n", "target 'trn1'"),
    ("model: {path: m.bin}\ninputs: ['x=1x2:float32']\ntarget: cpu\ncompiler: inductor\nflavour: x\n", "flavour"),
    ("[]\n", "holds no spec"),
])
def test_bad_spec_file_exits_2_with_one_line(cli, tmp_path: Path, content: str, in_message: str) -> None:
    (tmp_path / "m.bin").write_bytes(b"model")
    spec = tmp_path / "bad.yaml"
    spec.write_text(content)
    for command in ("compile", "lookup", "pull"):
        extra = ["--dest", str(tmp_path / "dest")] if command == "pull" else []
        r = cli(command, "--spec", str(spec), *extra)
        assert r.rc == 2, (command, r.stdout, r.stderr)
        assert in_message in r.one_line_error()
    assert not (tmp_path / "dest").exists()


def test_a_spec_the_service_refuses_exits_2(cli, tmp_path: Path) -> None:
    (tmp_path / "m.hlo.pb").write_bytes(hlo_model())
    # Valid in shape, but no registered worker has this compiler version.
    r = cli("compile", str(tmp_path / "m.hlo.pb"), "--input", "a=1:int8", "--target", "trn1",
            "--compiler-version", "9.9.9", "--json")
    assert r.rc == 2, r.stderr
    assert r.json()["error"] in ("toolchain_unavailable", "toolchain_ambiguous")
    *before, last = r.stderr.strip().splitlines()
    assert [line for line in before if line.startswith("uploaded ")] == before  # the upload, said once
    assert last.startswith("neffcache: ") and "version" in last and "Traceback" not in r.stderr


def test_usage_errors_exit_2(cli, tmp_path: Path) -> None:
    for args, text in ((["pull", "a" * 64], "--dest"), (["pull", "--dest", str(tmp_path)], "nothing to pull"),
                       (["pull", "xyz", "--dest", str(tmp_path)], "not an artifact key"),
                       (["compile"], "nothing to do"), (["compile", "--bogus"], "No such option"),
                       (["compile", str(tmp_path), "--input", "x=1:int8"], "--target"),
                       (["compile", "m", "--input", "x:1", "--target", "cpu"], "NAME=DIMxDIM"),
                       (["jobs", "--state", "done"], "--state")):
        r = cli(*args)
        assert r.rc == 2, (args, r.stderr)
        assert text in r.one_line_error(), (args, r.stderr)


def test_logs_follow_shows_a_running_compile_as_it_goes(cli, api: httpx.Client) -> None:
    digest = upload(api, hlo_model("double:sleep=3"))
    job_id = api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()["job"]["id"]
    wait_job(api, job_id, states=("running",), timeout_s=30)
    followed = cli("logs", job_id, "--follow", "--poll-interval", "0.2", timeout=60)
    assert followed.rc == 0, followed.stderr
    # Printed piece by piece while it ran, each line once, ending with the stored log's end.
    for line in ("compiling, step 1 of 3", "compiling, step 3 of 3", "Compiler status PASS"):
        assert followed.stdout.count(line) == 1, followed.stdout
    assert followed.stdout.strip() == api.get(f"/v1/jobs/{job_id}/log").text.strip()


def test_logs_of_a_stored_log_altered_after_the_job_exit_5_with_one_line(
        cli, api: httpx.Client, stack_settings: dict[str, Any]) -> None:
    # A job's stored log of more than one chunk (1 MiB), altered in the store: the service cuts
    # the body short rather than end it with wrong bytes; the command reads that as the integrity
    # failure it is (exit 5), not as an unreachable service (exit 6). The job is written into the
    # stack's database as a worker writes it, its log uploaded to the store by digest.
    from neffcache.db.session import Database

    tag = uuid.uuid4().hex.encode()
    log = b"".join(b"%s compiling op %07d: ok\n" % (tag, i) for i in range(60_000))  # ~3.5 MiB
    digest = upload(api, log)
    sha = digest.split(":")[1]
    job_id = str(uuid.uuid4())
    db = Database(stack_settings["database_url"])
    try:
        with db.session() as session:
            session.add(Job(id=job_id, key=hashlib.sha256(tag).hexdigest(), manifest=SAMPLE_MANIFEST, queue="q",
                            state="failed", attempts=1, max_attempts=1, cancel_requested=False, created_at=utcnow(),
                            log_digest=digest, log_bytes=len(log), log_tail=log[-100:].decode()))
    finally:
        db.dispose()
    assert cli("logs", job_id).stdout.encode() == log

    store = open_store(Settings(**stack_settings))
    overwrite_stored_bytes(store, sha, log[:-1] + bytes([log[-1] ^ 0x01]))
    try:
        r = cli("logs", job_id)
        assert r.rc == 5, (r.stdout[-200:], r.stderr)
        line = r.one_line_error()
        assert line.startswith(f"neffcache: the log of job {job_id}: the service ended the transfer") and \
            "corrupt" in line, line
        assert r.stdout == ""
        as_json = cli("logs", job_id, "--json")
        assert as_json.rc == 5 and as_json.json()["error"] == "integrity_failure", as_json.stdout
    finally:
        overwrite_stored_bytes(store, sha, log)
    assert cli("logs", job_id).rc == 0  # repaired, it prints
