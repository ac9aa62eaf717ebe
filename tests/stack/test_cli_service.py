"""The command against the running service: a /v1 suffix, the line naming the service that
answered, a closed stdout, key prefixes (the cases that need no service are in
tests/unit/client/test_cli.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.api import NEURON_RUNTIME, published
from tests.support.cli import Result, client_env, run_cli, run_cli_into_closed_pipe
from tests.support.stack import REPO, free_port


def test_a_v1_suffix_on_the_url_is_tolerated(running, tokens: dict[str, str]) -> None:
    for suffix in ("/v1", "/v1/"):
        r = run_cli(["stats", "--json"], client_env(running.url + suffix, tokens["read"]))
        assert r.rc == 0, (suffix, r.stderr)
        assert "lookups" in r.json()
        human = run_cli(["stats"], client_env(running.url + suffix, tokens["read"]))
        assert human.rc == 0 and human.last_stderr_line() == f"service: {running.url}"
    flag = run_cli(["--url", f"{running.url}/v1", "workers", "--json"],
                   client_env("http://127.0.0.1:9", tokens["read"]))
    assert flag.rc == 0 and "workers" in flag.json()


# --- naming the service that answered ----------------------------------------------------------
def test_human_output_names_the_service_that_answered_and_json_does_not(cli, running) -> None:
    human = cli("stats")
    assert human.rc == 0 and human.last_stderr_line() == f"service: {running.url}"
    assert "default" not in human.stderr
    as_json = cli("stats", "--json")
    assert as_json.rc == 0 and as_json.stderr == "" and "lookups" in as_json.json()
    # An error from the service names it in its one line; with --json the line stays as it was.
    missing = cli("show", "0" * 64)
    assert missing.rc == 4
    line = missing.one_line_error()
    assert "does not exist" in line and line.endswith(f" [service: {running.url}]")
    assert running.url not in cli("show", "0" * 64, "--json").one_line_error()
    # Nothing answered: no service to name, the error says where it looked.
    nowhere = run_cli(["stats"], client_env(f"http://127.0.0.1:{free_port()}"))
    assert nowhere.rc == 6 and "service:" not in nowhere.one_line_error()


def test_without_neffcache_url_it_says_the_url_is_only_the_default(running, tokens: dict[str, str]) -> None:
    """NEFFCACHE_URL unset and no --url: the default URL. The default is pointed at the test
    service (in the child process only) so that something answers there."""
    env = {k: v for k, v in client_env(running.url, tokens["read"]).items() if k != "NEFFCACHE_URL"}
    program = ("import sys; from neffcache.client import config; config.DEFAULT_URL = sys.argv.pop(1); "
               "from neffcache.client.cli import main; main()")

    def run(*args: str, **extra: str) -> Result:
        proc = subprocess.run([sys.executable, "-c", program, running.url, *args], env={**env, **extra}, cwd=REPO,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    human = run("workers")
    assert human.rc == 0, human.stderr
    assert human.last_stderr_line() == f"service: {running.url} (default; set NEFFCACHE_URL)"
    failed = run("show", "0" * 64)
    assert failed.rc == 4 and failed.one_line_error().endswith(f"[service: {running.url} (default; set NEFFCACHE_URL)]")
    quiet = run("workers", "--json")
    assert quiet.rc == 0 and quiet.stderr == ""
    named = run("workers", NEFFCACHE_URL=running.url)
    assert named.rc == 0 and named.last_stderr_line() == f"service: {running.url}"


# --- a closed stdout ---------------------------------------------------------------------------
def test_a_closed_stdout_is_not_a_failure(running, tokens: dict[str, str], api: httpx.Client) -> None:
    _, artifact = published(api)
    key, job = artifact["key"], artifact["job_id"]
    env = client_env(running.url, tokens["read"])
    for args in (["toolchains"], ["toolchains", "--json"], ["workers"], ["jobs", "--limit", "5"], ["stats"], ["ls"],
                 ["show", key], ["show", key, "--json"], ["lock", key], ["logs", job],
                 ["--help"], ["pull", "--help"], ["--version"]):
        r = run_cli_into_closed_pipe(args, env)
        assert (r.rc, r.stderr) == (0, ""), args
    # `logs --follow` says the job's state on stderr before the log goes to stdout; then it stops, quietly.
    followed = run_cli_into_closed_pipe(["logs", job, "--follow"], env)
    assert followed.rc == 0 and followed.stderr.strip().splitlines() == [f"job {job}: succeeded (attempt 1/2)"]


def test_a_key_prefix_pulls_and_locks_the_whole_key(cli, api: httpx.Client, tmp_path: Path) -> None:
    _, artifact = published(api)
    key, prefix = artifact["key"], artifact["key"][:10]
    dest = tmp_path / "neffs"
    pulled = cli("pull", prefix, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME, "--json")
    assert pulled.rc == 0, pulled.stderr
    [item] = pulled.json()["artifacts"]
    assert item["key"] == key and item["requested_as"] == [prefix]
    assert (dest / key / "model.neff").is_file() and not (dest / prefix).exists()
    assert [a["key"] for a in json.loads((dest / "neffcache.lock.json").read_text())["artifacts"]] == [key]
    locked = cli("lock", prefix)
    assert locked.rc == 0, locked.stderr
    [entry] = json.loads(locked.stdout)["artifacts"]
    assert entry["key"] == key
    assert {f["path"] for f in entry["files"]} == {f"{key}/{f['name']}" for f in artifact["files"]}
    shown = cli("show", prefix)
    assert shown.rc == 0 and re.search(rf"\bkey\s+.*{key}", shown.stdout), shown.stdout
    job = artifact["job_id"]
    followed = cli("logs", job[:8], "--follow", "--json")
    assert followed.rc == 0 and followed.json()["job"] == job and followed.json()["state"] == "succeeded"
