"""Which service the `neffcache` command talks to, and how a run ends, as new users met them:

- human output names the service that answered (and says when it is only the default URL);
  --json output does not;
- a web server that is not neffcache is exit 6, "no neffcache service at URL"; a /v1 suffix on
  the URL is tolerated;
- a closed stdout (`neffcache toolchains | head`) is exit 0, quietly;
- artifact keys may be unique prefixes (8 hex characters at least); what is written downstream
  (DEST folders, lock files) carries the whole key;
- an artifact's lookup hits and downloads are named apart; `hits` shows each row's count (an hour
  of rolled-up hits counts them all);
- a pull whose transfer the service cuts short (it does for a corrupt object) is exit 5, one line;
  one that cannot reach the service is exit 6;
- a pull of an artifact whose file names would be unsafe on disk is exit 5, nothing written;
- `logs` of a stored log whose transfer the service cuts short (it does for a corrupt log) is exit
  5, one line; a cut running tail, or a service that cannot be reached, is exit 6;
- a lock of an artifact whose file names would be unsafe on disk is exit 5, no lock written.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neffcache.client.config import DEFAULT_URL
from tests.support.api import NEURON_RUNTIME
from tests.support.cli import client_env, run_cli
from tests.support.http_stub import ArtifactService, JobLogService, StubHandler, artifact_body, serve
from tests.support.stack import REPO, free_port

KEY = "3f2a" + "0" * 60


# --- a web server that is not neffcache --------------------------------------------------------
class _OtherServer(StubHandler):
    """Some other web server on the port: `status` and `body` for every request."""

    status = 404
    content_type = "text/html"
    body = b"<!DOCTYPE HTML>\n<html><head><title>Error response</title></head></html>\n"

    def _answer(self, with_body: bool = True) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        if with_body:
            self.wfile.write(self.body)

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer()

    do_PUT = do_POST


OTHER_SERVERS = {
    "404 page": {},
    "catch-all home page": {"status": 200},
    "another FastAPI app": {"content_type": "application/json", "body": b'{"detail":"Not Found"}'},
}


@pytest.fixture(params=sorted(OTHER_SERVERS))
def other_server(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Handler", (_OtherServer,), OTHER_SERVERS[request.param])
    with serve(handler) as url:
        yield url


def test_a_web_server_that_is_not_neffcache_exits_6_with_one_line(other_server: str, tmp_path: Path) -> None:
    url = other_server
    model = tmp_path / "m.hlo.pb"
    model.write_bytes(b"HloModule m")
    dest = tmp_path / "dest"
    for args in (["stats"], ["show", KEY], ["jobs", "--json"], ["pull", KEY[:12], "--dest", str(dest)], ["lock", KEY],
                 ["logs", "0b7c9e2a"], ["compile", str(model), "--input", "x=1:int8", "--target", "trn1"],
                 ["--url", f"{url}/v1", "toolchains"]):
        r = run_cli(args, client_env(url))
        assert r.rc == 6, (args, r.stdout, r.stderr)
        assert r.one_line_error().startswith(f"neffcache: no neffcache service at {url} ("), (args, r.stderr)
    as_json = run_cli(["stats", "--json"], client_env(url))
    assert as_json.rc == 6 and as_json.json()["error"] == "unreachable"
    assert as_json.json()["detail"].startswith(f"no neffcache service at {url} ")
    assert not dest.exists()


def test_the_readme_and_the_help_name_the_default_url() -> None:
    readme = (REPO / "README.md").read_text()
    client_section = readme.split("## The client: `neffcache`", 1)[1].split("\n## ", 1)[0]
    assert DEFAULT_URL in client_section and "NEFFCACHE_URL" in client_section
    helped = run_cli(["stats", "--help"], client_env(DEFAULT_URL))
    assert helped.rc == 0 and DEFAULT_URL in helped.stdout


# --- key prefixes ------------------------------------------------------------------------------
def test_a_key_prefix_shorter_than_8_is_refused_with_exit_2(tmp_path: Path) -> None:
    env = client_env(f"http://127.0.0.1:{free_port()}")  # nothing is asked: refused before any request
    dest = tmp_path / "dest"
    for args in (["pull", "3f2a0c1", "--dest", str(dest)], ["lock", "3f2a0c1"], ["show", "3f2a0c1"],
                 ["hits", "3f2a0c1"], ["pull", KEY.upper(), "--dest", str(dest)], ["show", KEY + "0"]):
        r = run_cli(args, env)
        assert r.rc == 2, (args, r.stderr)
        line = r.one_line_error()
        assert "is not an artifact key (8 to 64 lowercase hex characters" in line, args
    assert not dest.exists()


# --- lookup hits and downloads -----------------------------------------------------------------
def _artifact(**counts: int) -> dict[str, Any]:
    return {
        "key": KEY, "created_at": "2026-01-02T03:04:05Z", "compile_seconds": 12.5,
        "job_id": "0b7c9e2a-0000-4000-8000-000000000000",
        "manifest": {"model": {"format": "hlo", "digest": "sha256:" + "1" * 64},
                     "inputs": [{"name": "x", "shape": [1, 128], "dtype": "int64"}], "target": "trn1",
                     "compiler": {"name": "neuronx-cc", "version": "2.21.18209.0", "flags": ["--optlevel=2"]},
                     "runtime": {"name": "neuron-runtime", "version": NEURON_RUNTIME}, "namespace": "default"},
        "files": [{"name": "model.neff", "size": 2048, "sha256": "2" * 64}],
        "annotations": {},
        **counts,
    }


class _Neffcache(StubHandler):
    """Answers like neffcache, with set bodies: an artifact (GET and POST /v1/lookup) and stats."""

    artifact: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    storage: dict[str, Any] | None = None  # None: a service older than GET /v1/storage (404)

    service_version = "0.1.0"

    def do_GET(self) -> None:
        if self.path == "/v1/storage":
            if self.storage is None:
                self.send_json(404, {"error": "not_found", "detail": "Not Found"})
            else:
                self.send_json(200, self.storage)
            return
        self.send_json(200, self.stats if self.path == "/v1/stats" else self.artifact)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_json(200, {"status": "hit", "key": KEY, "artifact": self.artifact, "spec": {}})


@pytest.mark.parametrize("counts, lookup_hits, downloads", [
    ({"lookup_hits": 1, "downloads": 1, "hits": 1}, "1", "1"),  # a service that names the two apart
    ({"hits": 2}, "2", ""),  # an older one: `hits` only
])
def test_lookup_hits_and_downloads_are_named_apart(counts: dict[str, int], lookup_hits: str, downloads: str) -> None:
    summary = {"lookups": 4, "misses": 3, "hit_rate": 0.25, "compile_seconds_saved": 12.5, **counts}
    stats = {**summary, "downloads": 1, "by_target": {"trn1": summary}, "by_compiler": {}}
    handler = type("Handler", (_Neffcache,), {"artifact": _artifact(**counts), "stats": stats})
    with serve(handler) as url:
        env = client_env(url)
        shown = run_cli(["show", KEY[:8]], env)
        assert shown.rc == 0, shown.stderr
        rows = {m.group(1): m.group(2) for m in re.finditer(r"│ (lookup hits|downloads|hits)\s*│ ?(\S*)", shown.stdout)}
        assert rows == {"lookup hits": lookup_hits, "downloads": downloads}, shown.stdout
        looked = run_cli(["lookup", "sha256:" + "1" * 64, "--input", "x=1x128:int64", "--target", "trn1",
                          "--runtime-version", NEURON_RUNTIME], env)
        assert looked.rc == 0 and f"{lookup_hits} lookup hit(s)" in looked.stdout, looked.stdout
        assert (f"{downloads} download(s)" in looked.stdout) == bool(downloads)
        stat = run_cli(["stats"], env)
        assert stat.rc == 0 and re.search(r"lookups\s*\S\s*lookup hits\s*\S\s*misses", stat.stdout), stat.stdout
        assert re.search(rf"│ all\s*│ 4\s*│ {summary.get('lookup_hits', 2)}\s*│ 3", stat.stdout), stat.stdout
        assert "downloads 1," in stat.stdout
        assert "stored" not in stat.stdout  # this service has no GET /v1/storage: nothing said of it


def test_stats_shows_the_storage_against_the_quota_and_a_blocked_eviction() -> None:
    summary = {"lookups": 0, "lookup_hits": 0, "misses": 0, "hit_rate": None, "compile_seconds_saved": 0}
    storage = {"artifacts": 3, "stored_bytes": 3 * 1024**3, "pinned_bytes": 2 * 1024**3, "quota_bytes": 1024**3,
               "by_namespace": {"team-a": {"artifacts": 3, "stored_bytes": 3 * 1024**3, "pinned_bytes": 2 * 1024**3,
                                           "quota_bytes": 2 * 1024**3}},
               "last_gc": {"started_at": "2026-12-04T10:00:00+00:00", "finished_at": "2026-12-04T10:00:05+00:00",
                           "evicted_artifacts": 4, "evicted_bytes": 5 * 1024**2, "objects_deleted": 2,
                           "bytes_deleted": 1024},
               "blocked": ["the deployment keeps 3221225472 bytes, over its quota of 1073741824: ..."]}
    handler = type("Handler", (_Neffcache,), {"stats": {**summary, "by_target": {}, "by_compiler": {}},
                                              "storage": storage})
    with serve(handler) as url:
        shown = run_cli(["stats"], client_env(url))
        assert shown.rc == 0, shown.stderr
        assert "stored 3.0 GiB of a 1.0 GiB quota in 3 artifacts, 2.0 GiB pinned" in shown.stdout
        assert "namespace team-a: 3.0 GiB of a 2.0 GiB quota" in shown.stdout
        assert "evicted 4 artifacts (5.0 MiB), deleted 2 objects (1.0 KiB)" in shown.stdout
        assert "eviction is blocked: the deployment keeps" in shown.stderr
        as_json = run_cli(["stats", "--json"], client_env(url))
        assert json.loads(as_json.stdout)["storage"] == storage


class _Hits(_Neffcache):
    """/v1/hits with one raw hit and one hour of rolled-up hits (a service past its retention)."""

    def do_GET(self) -> None:
        self.send_json(200, {"hits": [
            {"key": KEY, "caller": "ci", "kind": "lookup", "outcome": "hit", "target": "trn1",
             "at": "2026-01-02T03:04:05Z", "count": 1},
            {"key": KEY, "caller": None, "kind": "compile", "outcome": "hit", "target": "trn1",
             "at": "2025-11-02T03:00:00Z", "count": 40}]})


def test_hits_show_how_many_each_row_counts() -> None:
    with serve(_Hits) as url:
        shown = run_cli(["hits"], client_env(url))
        as_json = run_cli(["hits", "--json"], client_env(url))
    assert shown.rc == 0, shown.stderr
    assert re.search(r"when\s*\S count\s*\S caller", shown.stdout), shown.stdout
    counts = re.findall(r"Z[^│]*│ (\d+)\s*│ (\S+)", shown.stdout)
    assert counts == [("1", "ci"), ("40", "(anonymous)")], shown.stdout
    assert [h["count"] for h in as_json.json()["hits"]] == [1, 40]


# --- pulls that fail -----------------------------------------------------------------------------
WEIGHTS = bytes(range(256)) * 12_288  # 3 MiB: more than the 1 MiB chunk the service holds back


def _artifact_service(files: dict[str, bytes], **attributes: Any) -> type[ArtifactService]:
    return type("Service", (ArtifactService,), {"artifact": artifact_body(KEY, NEURON_RUNTIME, files),
                                                 "contents": files, **attributes})


def test_a_pull_the_service_cuts_short_exits_5_with_one_line(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    args = ["pull", KEY, "--dest", str(dest), "--runtime-version", NEURON_RUNTIME]
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    with serve(_artifact_service({"weights.bin": WEIGHTS}, sent=len(WEIGHTS) - 1024 * 1024)) as url:
        r = run_cli(args, client_env(url))
        as_json = run_cli([*args, "--json"], client_env(url))
    assert r.rc == 5, (r.stdout, r.stderr)
    line = r.one_line_error()
    assert line.startswith("neffcache: weights.bin of artifact ") and digest in line and "corrupt" in line, line
    assert as_json.rc == 5 and as_json.json()["error"] == "integrity_failure"
    assert not dest.exists()

    # A plain network failure stays exit 6: nothing listens there.
    refused = run_cli(args, client_env(f"http://127.0.0.1:{free_port()}"))
    assert refused.rc == 6, refused.stderr
    assert refused.one_line_error().startswith("neffcache: cannot reach the neffcache service at ")
    assert not dest.exists()


@pytest.mark.parametrize("name", ["..", "-rf", "CON", "nul.neff", "a/b", "/etc/passwd", "a\\b", "a\x00b"])
def test_a_pull_of_an_artifact_whose_file_name_is_unsafe_exits_5_and_writes_nothing(tmp_path: Path,
                                                                                    name: str) -> None:
    dest = tmp_path / "dest"
    with serve(_artifact_service({"model.neff": b"neff", name: b"payload"})) as url:
        r = run_cli(["pull", KEY[:12], "--dest", str(dest), "--runtime-version", NEURON_RUNTIME], client_env(url))
    assert r.rc == 5, (r.stdout, r.stderr)
    line = r.one_line_error()
    assert f"artifact {KEY} names a file that would be unsafe on disk, nothing was pulled: {name!r}" in line, line
    assert not dest.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


# --- logs the service cuts short -------------------------------------------------------------------
JOB = "394a1b2c-0000-4000-8000-000000000000"
LOG = b"".join(b"compiling op %07d: ok\n" % i for i in range(120_000))  # ~3 MiB: more than one 1 MiB chunk


def _log_service(**attributes: Any) -> type[JobLogService]:
    return type("Service", (JobLogService,), {"job_id": JOB, "log": LOG, **attributes})


def test_logs_of_a_stored_log_the_service_cuts_short_exit_5_with_one_line() -> None:
    cut = len(LOG) - 1024 * 1024  # the last chunk held back
    with serve(_log_service(sent=cut)) as url:
        r = run_cli(["logs", JOB], client_env(url))
        as_json = run_cli(["logs", JOB, "--json"], client_env(url))
        followed = run_cli(["logs", JOB, "--follow", "--poll-interval", "0.05"], client_env(url))
    assert r.rc == 5, (r.stdout[-200:], r.stderr)
    line = r.one_line_error()
    assert line.startswith(f"neffcache: the log of job {JOB}: the service ended the transfer after {cut} of "
                           f"{len(LOG)} bytes") and "corrupt" in line, line
    assert r.stdout == ""
    assert as_json.rc == 5 and as_json.json()["error"] == "integrity_failure", as_json.stdout
    assert followed.rc == 5 and "corrupt" in followed.stderr.strip().splitlines()[-1], followed.stderr

    # One that fits in one chunk is refused whole: a 502 corrupt_object, exit 5 as well.
    with serve(_log_service(corrupt=True)) as url:
        small = run_cli(["logs", JOB], client_env(url))
    assert small.rc == 5 and "is corrupt in the object store" in small.one_line_error(), small.stderr

    # The whole log prints.
    with serve(_log_service()) as url:
        whole = run_cli(["logs", JOB], client_env(url))
    assert whole.rc == 0 and whole.stdout.encode() == LOG, whole.stderr


def test_logs_cut_short_otherwise_or_unreachable_exit_6() -> None:
    # A running job's tail is no stored object the service vouches for: a cut body is the transfer failing.
    with serve(_log_service(complete=False, sent=1000)) as url:
        tail = run_cli(["logs", JOB], client_env(url))
    assert tail.rc == 6, (tail.stdout[-200:], tail.stderr)
    assert tail.one_line_error().startswith(f"neffcache: the log of job {JOB}: the download from 127.0.0.1 "
                                            f"stopped after 1000 of {len(LOG)} bytes")

    refused = run_cli(["logs", JOB], client_env(f"http://127.0.0.1:{free_port()}"))  # nothing listens there
    assert refused.rc == 6, refused.stderr
    assert refused.one_line_error().startswith("neffcache: cannot reach the neffcache service at ")


# --- locks of unsafe file names ----------------------------------------------------------------------
# ("a/b" is a folder artifact's path, locked for pull --into: tests/stack/test_cli_folders.py)
@pytest.mark.parametrize("name", ["..", "-rf", "CON", "nul.neff", "a//b", "/etc/passwd", "a\\b", "a\x00b"])
def test_a_lock_of_an_artifact_whose_file_name_is_unsafe_exits_5_and_writes_nothing(tmp_path: Path,
                                                                                    name: str) -> None:
    lock = tmp_path / "deploy.lock.json"
    with serve(_artifact_service({"model.neff": b"neff", name: b"payload"})) as url:
        r = run_cli(["lock", KEY[:12], "-o", str(lock)], client_env(url))
        to_stdout = run_cli(["lock", KEY[:12]], client_env(url))
    assert r.rc == 5, (r.stdout, r.stderr)
    line = r.one_line_error()
    assert f"artifact {KEY} names a file that would be unsafe on disk, nothing was written: {name!r}" in line, line
    assert not lock.exists() and list(tmp_path.iterdir()) == []
    assert to_stdout.rc == 5 and to_stdout.stdout == "", to_stdout.stdout


def test_a_lock_of_file_names_one_on_a_case_insensitive_disk_exits_5_and_a_safe_one_is_written(
        tmp_path: Path) -> None:
    lock = tmp_path / "deploy.lock.json"
    with serve(_artifact_service({"model.neff": b"neff", "MODEL.neff": b"other"})) as url:
        r = run_cli(["lock", KEY[:12], "-o", str(lock)], client_env(url))
    assert r.rc == 5 and "case-insensitive" in r.one_line_error(), r.stderr
    assert not lock.exists()

    with serve(_artifact_service({"model.neff": b"neff", "compile.log": b"log"})) as url:
        good = run_cli(["lock", KEY[:12], "-o", str(lock)], client_env(url))
    assert good.rc == 0, good.stderr
    assert [f["name"] for f in json.loads(lock.read_text())["artifacts"][0]["files"]] == ["model.neff", "compile.log"]
