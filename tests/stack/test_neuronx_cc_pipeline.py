"""The neuronx-cc path through service -> queue -> worker, against the test double."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from neffcache.key import key_for_spec
from tests.support.api import hlo_model, neuron_spec, upload, wait_job

DOUBLE_VERSION = "2.27.5334.0+2d6a2ba2b"  # what tests/doubles/bin/neuronx-cc reports by default


def _argv_for(record_path, model_marker: str) -> list[str]:
    for line in record_path.read_text().splitlines():
        argv = json.loads(line)
        if any(model_marker in a for a in argv):
            return argv
    raise AssertionError(f"no neuronx-cc run recorded for {model_marker}")


def test_compile_carries_canonical_flags_target_and_reported_version(api: httpx.Client, running) -> None:
    digest = upload(api, hlo_model())
    spec = neuron_spec(digest, target="trn2", compiler={
        "name": "neuronx-cc", "flags": ["-O3", "--auto-cast", "none", "-lnc", "2", "--verbose=info"],
    })
    r = api.post("/v1/compile", json={"spec": spec})
    assert r.status_code == 202, r.text
    body = r.json()
    # The version left out of the spec is filled in with exactly what the binary reports.
    assert body["spec"]["compiler"]["version"] == DOUBLE_VERSION
    manifest, key = key_for_spec(body["spec"])
    assert body["key"] == key and manifest["compiler"]["version"] == DOUBLE_VERSION
    job = wait_job(api, body["job"]["id"])
    assert job["state"] == "succeeded", job

    lines = [json.loads(x) for x in running.double_record.read_text().splitlines()]
    argv = next(a for a in lines if "--target" in a and a[a.index("--target") + 1] == "trn2")
    assert argv[0] == "compile"
    assert argv[argv.index("--framework") + 1] == "XLA"
    assert argv[-3:] == ["--auto-cast=none", "--logical-nc-config=2", "--optlevel=3"]
    assert "--verbose=info" not in argv

    artifact = api.get(f"/v1/artifacts/{key}").json()
    names = {f["name"] for f in artifact["files"]}
    assert names == {"model.neff", "compile.log"}
    assert artifact["manifest"]["compiler"]["flags"] == ["--auto-cast=none", "--logical-nc-config=2", "--optlevel=3"]


def test_failed_compile_keeps_log_tail_and_is_remembered_until_forced(api: httpx.Client) -> None:
    digest = upload(api, hlo_model("double:fail"))
    spec = neuron_spec(digest)
    first = api.post("/v1/compile", json={"spec": spec}).json()
    job = wait_job(api, first["job"]["id"])
    assert job["state"] == "failed" and job["failure_class"] == "compile_error"
    assert "compilation failed" in job["log_tail"]
    assert job["attempts"] == 1  # deterministic: not retried
    log = api.get(f"/v1/jobs/{job['id']}/log")
    assert log.status_code == 200 and "compilation failed" in log.text

    again = api.post("/v1/compile", json={"spec": spec})
    assert again.status_code == 200
    assert again.json()["status"] == "failed" and again.json()["job"]["id"] == job["id"]

    forced = api.post("/v1/compile", json={"spec": spec, "force": True})
    assert forced.status_code == 202 and forced.json()["job"]["id"] != job["id"]
    assert wait_job(api, forced.json()["job"]["id"])["failure_class"] == "compile_error"


@pytest.mark.parametrize("directive, failure_class", [("double:hang", "timeout"), ("double:kill", "oom")])
def test_transient_failures_are_retried_then_recorded(api: httpx.Client, directive: str, failure_class: str) -> None:
    digest = upload(api, hlo_model(directive))
    r = api.post("/v1/compile", json={"spec": neuron_spec(digest)})
    job = wait_job(api, r.json()["job"]["id"], timeout_s=90)
    assert job["state"] == "failed", job
    assert job["failure_class"] == failure_class
    assert job["attempts"] == job["max_attempts"] == 2
    # A transient failure is not remembered: the next request compiles again.
    again = api.post("/v1/compile", json={"spec": neuron_spec(digest)})
    assert again.status_code == 202 and again.json()["job"]["id"] != job["id"]
    api.post(f"/v1/jobs/{again.json()['job']['id']}/cancel")


def test_a_valid_neff_is_published_with_its_header_fields(api: httpx.Client) -> None:
    digest = upload(api, hlo_model())
    spec = neuron_spec(digest, target="trn2", compiler={"name": "neuronx-cc", "flags": ["--lnc=2"]})
    queued = api.post("/v1/compile", json={"spec": spec}).json()
    assert wait_job(api, queued["job"]["id"])["state"] == "succeeded"
    files = {f["name"]: f for f in api.get(f"/v1/artifacts/{queued['key']}").json()["files"]}
    assert files["model.neff"]["neff"] == {
        "neff_version": "2.0", "neff_build_version": DOUBLE_VERSION, "lnc_size": 2, "feature_bits": 0,
        "num_tpb": 1, "name": "model",
    }
    assert "neff" not in files["compile.log"]


@pytest.mark.parametrize("directive, reason", [
    ("double:truncated", "but the file has"),
    ("double:inconsistent", "header_size 10"),
    ("double:notar", "not a tarball"),
    ("double:future", "neff_version 3.0"),
])
def test_an_invalid_neff_fails_the_job_and_publishes_nothing(api: httpx.Client, directive: str, reason: str) -> None:
    digest = upload(api, hlo_model(directive))
    queued = api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()
    job = wait_job(api, queued["job"]["id"])
    assert job["state"] == "failed" and job["failure_class"] == "invalid_output", job
    assert reason in job["message"] and job["attempts"] == 1
    assert api.get(f"/v1/artifacts/{queued['key']}").status_code == 404
    assert api.post("/v1/lookup", json={"spec": neuron_spec(digest)}).status_code == 404
    # Deterministic: remembered like a compile error.
    assert api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()["status"] == "failed"


def test_a_running_compile_log_can_be_followed(api: httpx.Client) -> None:
    # Under the test workers' 4 s compile timeout, so one attempt writes the whole log.
    digest = upload(api, hlo_model("double:sleep=3"))
    job_id = api.post("/v1/compile", json={"spec": neuron_spec(digest)}).json()["job"]["id"]
    wait_job(api, job_id, states=("running",), timeout_s=30)
    offset, seen, partial_reads = 0, "", 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = api.get(f"/v1/jobs/{job_id}").json()["state"]
        r = api.get(f"/v1/jobs/{job_id}/log", params={"offset": offset})
        if r.status_code == 200:
            assert r.headers["x-neffcache-log-skipped"] == "0"  # polled often enough: nothing lost
            if r.headers["x-neffcache-log-complete"] == "false":
                partial_reads += 1
            seen += r.text
            offset += len(r.content)
            assert int(r.headers["x-neffcache-log-size"]) >= offset
            if state == "succeeded" and r.headers["x-neffcache-log-complete"] == "true":
                break
        time.sleep(0.3)
    assert partial_reads >= 2, "the log was never readable while the compile ran"
    assert "compiling, step 2 of 3" in seen and "Compiler status PASS" in seen
    whole = api.get(f"/v1/jobs/{job_id}/log").text
    assert seen == whole  # read piece by piece, it is the stored log exactly
    assert api.get(f"/v1/jobs/{job_id}/log", params={"offset": len(whole.encode()) - 5}).text == whole[-5:]
