"""Scrubbing the object store (neffcache/storage/scrub.py, `neffcache-admin scrub`): every test
taking `object_store` runs against the folder store and against S3 on a real SeaweedFS."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys

import pytest

from neffcache.digests import digest_of
from neffcache.errors import EXIT_INTEGRITY, EXIT_SUCCESS, EXIT_UNAVAILABLE, StorageError
from neffcache.storage import ObjectStore, Verification
from neffcache.storage.filesystem import FilesystemObjectStore
from neffcache.storage.s3 import S3ObjectStore
from neffcache.storage.scrub import CorruptFound, ScrubReport, Unreadable, scrub
from tests.support.stack import REPO, settings_env
from tests.support.storage_fixtures import s3_settings_overrides
from tests.support.tamper import overwrite_stored_bytes


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fill(store: ObjectStore, sound: int, corrupt: int) -> tuple[list[bytes], dict[str, bytes]]:
    """`sound` good objects and `corrupt` damaged ones: (good bytes, {digest: damaged bytes})."""
    good = [f"sound object {i}".encode() * 50 for i in range(sound)]
    for data in good:
        store.put(io.BytesIO(data))
    damaged = {}
    for i in range(corrupt):
        data = f"damaged object {i}".encode() * 50
        store.put(io.BytesIO(data))
        damaged[sha256(data)] = data[:-1] + b"!"
        overwrite_stored_bytes(store, sha256(data), damaged[sha256(data)])
    return good, damaged


def test_scrub_reports_each_corrupt_object_and_counts_the_rest(object_store: ObjectStore) -> None:
    good, damaged = fill(object_store, sound=3, corrupt=2)

    report = scrub(object_store)

    assert (report.listed, report.checked, report.vanished) == (5, 5, 0)
    assert report.bytes_checked == sum(map(len, good)) + sum(map(len, damaged.values()))
    assert sorted(report.corrupt, key=lambda c: c.digest) == sorted(
        (CorruptFound(digest_of(d), len(bad), digest_of(sha256(bad))) for d, bad in damaged.items()),
        key=lambda c: c.digest)
    assert report.unreadable == [] and report.exit_code == EXIT_INTEGRITY
    assert report.summary().startswith("scrubbed 5 of 5 objects") and "2 corrupt" in report.summary()
    # Reporting changes nothing: the corrupt objects are still where they were.
    for digest in damaged:
        check = object_store.verify(digest)
        assert check is not None and not check.ok


def test_a_clean_store_scrubs_clean(object_store: ObjectStore) -> None:
    fill(object_store, sound=2, corrupt=0)
    report = scrub(object_store)
    assert (report.listed, report.checked, report.corrupt, report.exit_code) == (2, 2, [], EXIT_SUCCESS)
    empty = scrub(object_store, sample=5)
    assert (empty.listed, empty.checked) == (2, 2)


def test_quarantine_moves_the_corrupt_ones_aside_so_a_reupload_recreates_them(object_store: ObjectStore) -> None:
    good, damaged = fill(object_store, sound=2, corrupt=1)
    [(digest, _)] = damaged.items()

    report = scrub(object_store, quarantine=True)

    [found] = report.corrupt
    assert found.digest == digest_of(digest) and found.quarantined and digest in found.quarantined
    assert report.quarantined == 1 and report.exit_code == EXIT_INTEGRITY
    assert object_store.stat(digest) is None
    assert {o.digest for o in object_store.iter_objects()} == {sha256(d) for d in good}
    # The next scrub is clean, and the right bytes come back with a plain upload.
    assert scrub(object_store).exit_code == EXIT_SUCCESS
    assert object_store.put(io.BytesIO(b"damaged object 0" * 50)).created is True
    assert scrub(object_store).checked == 3


def test_a_sample_checks_that_many_objects_chosen_at_random(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(object_store, sound=6, corrupt=0)
    everything = {o.digest for o in object_store.iter_objects()}
    seen: set[str] = set()
    read: list[str] = []
    real_verify = object_store.verify

    def spy(digest: str) -> Verification | None:
        read.append(digest)
        return real_verify(digest)

    monkeypatch.setattr(object_store, "verify", spy)
    for seed in range(12):
        read.clear()
        report = scrub(object_store, sample=2, rng=random.Random(seed))
        assert (report.listed, report.checked) == (6, 2)
        assert len(set(read)) == 2 and set(read) <= everything
        seen |= set(read)
    # Runs with other draws cover other objects: over a dozen runs, more than one pair.
    assert len(seen) > 2
    with pytest.raises(ValueError):
        scrub(object_store, sample=0)


def test_an_unreadable_object_is_reported_and_the_scrub_goes_on(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    good, damaged = fill(object_store, sound=2, corrupt=1)
    broken = sha256(good[0])
    real_verify = object_store.verify

    def flaky(digest: str) -> Verification | None:
        if digest == broken:
            raise StorageError("read timed out")
        return real_verify(digest)

    monkeypatch.setattr(object_store, "verify", flaky)
    report = scrub(object_store)

    assert report.unreadable == [Unreadable(digest_of(broken), "read timed out")]
    assert report.checked == 2 and len(report.corrupt) == 1
    assert report.exit_code == EXIT_INTEGRITY
    report.corrupt.clear()
    assert report.exit_code == EXIT_UNAVAILABLE


def test_an_object_deleted_while_scrubbing_is_not_corrupt(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(object_store, sound=2, corrupt=0)
    listed = list(object_store.iter_objects())
    object_store.delete(listed[0].digest)
    monkeypatch.setattr(object_store, "iter_objects", lambda: iter(listed))

    report = scrub(object_store)

    assert (report.listed, report.checked, report.vanished, report.corrupt) == (2, 1, 1, [])
    assert report.exit_code == EXIT_SUCCESS and "1 deleted meanwhile" in report.summary()


def test_the_report_as_json() -> None:
    report = ScrubReport(listed=3, checked=2, bytes_checked=10, corrupt=[
        CorruptFound("sha256:" + "a" * 64, 5, "sha256:" + "b" * 64, "quarantine/x")])
    assert json.loads(json.dumps(report.to_json())) == {
        "listed": 3, "checked": 2, "bytes_checked": 10, "vanished": 0, "quarantined": 1, "unreadable": [],
        "corrupt": [{"digest": "sha256:" + "a" * 64, "size": 5, "actual": "sha256:" + "b" * 64,
                     "quarantined": "quarantine/x"}],
    }


# --- the command -----------------------------------------------------------------------------


def admin_scrub(store: ObjectStore, request: pytest.FixtureRequest, *args: str) -> subprocess.CompletedProcess[str]:
    """`neffcache-admin scrub ARGS` against `store`, configured as a deployment configures it."""
    if isinstance(store, FilesystemObjectStore):
        settings = {"storage_url": f"file://{store.root}"}
    else:
        assert isinstance(store, S3ObjectStore)
        settings = s3_settings_overrides(request.getfixturevalue("seaweedfs"), store.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEFFCACHE_")}
    env.update(settings_env(settings))
    return subprocess.run([sys.executable, "-m", "neffcache.service.admin", "scrub", *args], env=env,
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_the_command_prints_a_line_per_corrupt_object_and_exits_5(
    object_store: ObjectStore, request: pytest.FixtureRequest
) -> None:
    good, damaged = fill(object_store, sound=2, corrupt=1)
    [(digest, bad)] = damaged.items()

    out = admin_scrub(object_store, request)

    assert out.returncode == EXIT_INTEGRITY, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"corrupt sha256:{digest} ({len(bad)} bytes): hashes to sha256:{sha256(bad)}"
    assert lines[-1].startswith("scrubbed 3 of 3 objects") and "1 corrupt" in lines[-1]
    assert out.stderr == ""

    quarantined = admin_scrub(object_store, request, "--quarantine", "--json")
    assert quarantined.returncode == EXIT_INTEGRITY, quarantined.stderr
    body = json.loads(quarantined.stdout)
    assert body["quarantined"] == 1 and body["corrupt"][0]["digest"] == f"sha256:{digest}"
    assert object_store.stat(digest) is None

    clean = admin_scrub(object_store, request, "--sample", "1", "--json")
    assert clean.returncode == EXIT_SUCCESS, clean.stderr
    assert json.loads(clean.stdout)["checked"] == 1
    assert {o.digest for o in object_store.iter_objects()} == {sha256(d) for d in good}
