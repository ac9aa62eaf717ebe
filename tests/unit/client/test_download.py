"""Downloading one file (client/download.py) from a stand-in service over real HTTP: how a body
that ends early is reported.

The service streams a stored object itself with its digest in X-Neffcache-Sha256, and ends the
body early instead of sending its last chunk when the stored bytes do not hash to that digest
(service/streaming.py): that is an integrity failure (exit 5), not an unreachable service (exit 6).
A service that cannot be reached at all stays exit 6. The same through the command is in
test_cli.py, and against the real service in tests/stack/test_cli_pull.py."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from neffcache.client.api import NeffcacheClient
from neffcache.client.download import download_file
from neffcache.client.pull import FileResult
from neffcache.errors import EXIT_INTEGRITY, EXIT_UNAVAILABLE, IntegrityFailure, Unreachable
from tests.support.api import NEURON_RUNTIME
from tests.support.http_stub import ArtifactService, artifact_body, serve
from tests.support.stack import free_port

KEY = "3f2a" + "0" * 60
WEIGHTS = bytes(range(256)) * 12_288  # 3 MiB: more than the service's 1 MiB chunk


def result_for(tmp_path: Path, data: bytes = WEIGHTS) -> FileResult:
    return FileResult(KEY, "weights.bin", tmp_path / KEY / "weights.bin", hashlib.sha256(data).hexdigest(), len(data))


def fetch(url: str, result: FileResult) -> None:
    with NeffcacheClient(url, timeout_s=10) as client:
        download_file(client, result, lambda n: None, threading.Event())


def service(**attributes: object) -> type[ArtifactService]:
    files = {"weights.bin": WEIGHTS}
    return type("Service", (ArtifactService,), {"artifact": artifact_body(KEY, NEURON_RUNTIME, files),
                                                 "contents": files, **attributes})


def test_a_body_the_service_ends_early_is_an_integrity_failure(tmp_path: Path) -> None:
    result = result_for(tmp_path)
    with serve(service(sent=len(WEIGHTS) - 1024 * 1024)) as url:  # the last chunk held back
        with pytest.raises(IntegrityFailure) as raised:
            fetch(url, result)
    error = raised.value
    assert error.exit_code == EXIT_INTEGRITY == 5
    assert "weights.bin" in error.detail and KEY in error.detail and result.sha256 in error.detail
    assert "corrupt" in error.detail and "\n" not in error.detail
    assert f"after {len(WEIGHTS) - 1024 * 1024} of {len(WEIGHTS)} bytes" in error.detail
    assert not result.path.exists() and list(result.path.parent.iterdir()) == []  # no temp file left


def test_a_body_that_ends_early_without_the_services_digest_is_unavailability(tmp_path: Path) -> None:
    # Not vouched for by the service (the object store behind a redirect, an older service):
    # nothing says the object is corrupt, so the transfer failed.
    result = result_for(tmp_path)
    with serve(service(sent=1000, vouch=False)) as url:
        with pytest.raises(Unreachable) as raised:
            fetch(url, result)
    assert raised.value.exit_code == EXIT_UNAVAILABLE == 6
    assert "weights.bin" in raised.value.detail and "after 1000 of" in raised.value.detail
    assert not result.path.exists()


def test_a_whole_body_is_written_and_a_service_that_refuses_connections_is_unavailable(tmp_path: Path) -> None:
    result = result_for(tmp_path)
    with serve(service()) as url:
        fetch(url, result)
    assert result.status == "downloaded" and result.path.read_bytes() == WEIGHTS

    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    again = result_for(tmp_path / "again")
    with pytest.raises(Unreachable) as raised:
        fetch(nowhere, again)
    assert raised.value.exit_code == EXIT_UNAVAILABLE and "cannot reach the neffcache service" in raised.value.detail
