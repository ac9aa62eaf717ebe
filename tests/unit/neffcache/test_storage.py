"""Behaviour of the object stores: every test taking `object_store` runs against the folder store
and against the S3 store on a real SeaweedFS."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from neffcache.errors import (
    CorruptObject,
    DigestMismatch,
    InvalidDigest,
    StorageError,
    TooLarge,
)
from neffcache.settings import Settings
from neffcache.storage import ObjectStore, PutResult, StoredObject, Verification, open_store
from neffcache.storage.base import quarantine_key
from neffcache.storage.filesystem import FilesystemObjectStore
from neffcache.storage.s3 import S3ObjectStore
from tests.support.seaweedfs import SeaweedFS
from tests.support.stack import REPO
from tests.support.storage_fixtures import s3_settings_overrides

MiB = 1024 * 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- looking behind the store's back ---------------------------------------------------------


def overwrite_behind_the_store(store: ObjectStore, digest: str, data: bytes) -> None:
    if isinstance(store, FilesystemObjectStore):
        store.path_for(digest).write_bytes(data)
    else:
        assert isinstance(store, S3ObjectStore)
        store.client.put_object(Bucket=store.bucket, Key=store.key_for(digest), Body=data)


def read_behind_the_store(store: ObjectStore, digest: str) -> bytes:
    if isinstance(store, FilesystemObjectStore):
        return store.path_for(digest).read_bytes()
    assert isinstance(store, S3ObjectStore)
    return store.client.get_object(Bucket=store.bucket, Key=store.key_for(digest))["Body"].read()


def stored_names(store: ObjectStore) -> list[str]:
    """Every name in the store (objects and quarantined ones), as the raw layout shows it."""
    if isinstance(store, FilesystemObjectStore):
        return sorted(str(p.relative_to(store.root)) for folder in ("sha256", "quarantine")
                      for p in (store.root / folder).rglob("*") if p.is_file())
    assert isinstance(store, S3ObjectStore)
    listing = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "/")
    return sorted(item["Key"] for item in listing.get("Contents", []))


def raw_name(store: ObjectStore, key: str) -> str:
    """`key` (relative to the store's root or prefix) as `stored_names` shows it."""
    return f"{store.prefix}/{key}" if isinstance(store, S3ObjectStore) else key


def read_quarantined(store: ObjectStore, digest: str) -> bytes:
    if isinstance(store, FilesystemObjectStore):
        return (store.root / quarantine_key(digest)).read_bytes()
    assert isinstance(store, S3ObjectStore)
    key = raw_name(store, quarantine_key(digest))
    return store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def count_publishes(store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The digests `store` publishes (writes under an object name) from now on."""
    published: list[str] = []
    real = store._publish

    def spy(staged: Path, digest: str) -> None:
        published.append(digest)
        real(staged, digest)

    monkeypatch.setattr(store, "_publish", spy)
    return published


def assert_nothing_staged(store: ObjectStore) -> None:
    assert list(store.staging_dir.iterdir()) == []


class GeneratedStream(io.RawIOBase):
    """`size` deterministic pseudo-random bytes made on demand, never held whole (the same bytes
    whatever the read sizes). Records the largest read asked for; refuses a read-everything."""

    def __init__(self, size: int) -> None:
        self.remaining = size
        self.counter = 0
        self.pending = bytearray()
        self.largest_read = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        assert n is not None and n > 0, f"the store asked for everything at once (read({n}))"
        self.largest_read = max(self.largest_read, n)
        n = min(n, self.remaining)
        while len(self.pending) < n:
            self.pending += hashlib.sha512(self.counter.to_bytes(8, "big")).digest()
            self.counter += 1
        chunk = bytes(self.pending[:n])
        del self.pending[:n]
        self.remaining -= n
        self.bytes_read += n
        return chunk


def generated_bytes_digest(size: int) -> tuple[str, int]:
    """sha256 and length of GeneratedStream(size), computed by reading it in fixed blocks."""
    stream = GeneratedStream(size)
    hasher = hashlib.sha256()
    while chunk := stream.read(64 * 1024):
        hasher.update(chunk)
    return hasher.hexdigest(), stream.bytes_read


# --- round trips -----------------------------------------------------------------------------


def test_put_then_stat_open_and_fetch_return_the_same_bytes(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    data = b"a NEFF is just bytes\n" * 1000
    digest = sha256(data)

    result = object_store.put(io.BytesIO(data))

    assert result == PutResult(digest, len(data), created=True)
    assert object_store.stat(digest) == StoredObject(digest, len(data))
    stream = object_store.open(digest)
    assert stream is not None
    with stream:
        assert stream.read() == data
    dest = tmp_path / "fetched.neff"
    assert object_store.fetch_to_path(digest, dest) is True
    assert dest.read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fetched")] == []
    assert_nothing_staged(object_store)


def test_objects_are_laid_out_under_sha256_and_the_first_two_hex(object_store: ObjectStore) -> None:
    data = b"layout"
    digest = sha256(data)
    object_store.put(io.BytesIO(data))

    expected = f"sha256/{digest[:2]}/{digest}"
    if isinstance(object_store, S3ObjectStore):
        expected = f"{object_store.prefix}/{expected}"
    assert stored_names(object_store) == [expected]


def test_put_path_with_the_right_expected_digest(object_store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "model.neff"
    source.write_bytes(b"\x00\x01neff" * 5000)
    digest = sha256(source.read_bytes())

    result = object_store.put_path(source, expected_digest=digest)

    assert result == PutResult(digest, source.stat().st_size, created=True)
    assert read_behind_the_store(object_store, digest) == source.read_bytes()
    assert source.exists()


def test_empty_object_round_trips(object_store: ObjectStore, tmp_path: Path) -> None:
    digest = sha256(b"")
    assert object_store.put(io.BytesIO(b"")) == PutResult(digest, 0, created=True)
    assert object_store.stat(digest) == StoredObject(digest, 0)
    assert object_store.fetch_to_path(digest, tmp_path / "empty") is True
    assert (tmp_path / "empty").read_bytes() == b""


def test_put_of_stored_bytes_returns_created_false_and_writes_nothing(
    object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"already here"
    digest = sha256(data)
    object_store.put(io.BytesIO(data))
    published = count_publishes(object_store, monkeypatch)

    again = object_store.put(io.BytesIO(data), expected_digest=digest)

    assert again == PutResult(digest, len(data), created=False, repaired=False)
    assert published == []
    assert read_behind_the_store(object_store, digest) == data
    assert len(stored_names(object_store)) == 1
    assert_nothing_staged(object_store)


@pytest.mark.parametrize("damage", ["flipped byte", "other size"])
def test_put_of_the_right_bytes_replaces_a_corrupt_stored_object(
    object_store: ObjectStore, tmp_path: Path, damage: str
) -> None:
    # Issue 8: a re-upload answered created=false and kept the corrupt copy, for ever.
    data = b"the model graph" * 500
    digest = sha256(data)
    object_store.put(io.BytesIO(data))
    bad = flip_last_byte(data) if damage == "flipped byte" else data + b"appended"
    overwrite_behind_the_store(object_store, digest, bad)

    again = object_store.put(io.BytesIO(data), expected_digest=digest)

    assert again == PutResult(digest, len(data), created=True, repaired=True)
    assert read_behind_the_store(object_store, digest) == data
    assert object_store.stat(digest) == StoredObject(digest, len(data))
    assert object_store.fetch_to_path(digest, tmp_path / "model") is True
    assert (tmp_path / "model").read_bytes() == data
    assert stored_names(object_store) == [raw_name(object_store, f"sha256/{digest[:2]}/{digest}")]
    assert_nothing_staged(object_store)
    # Repaired for good: the next put finds it sound and writes nothing.
    assert object_store.put(io.BytesIO(data)).created is False


def test_put_of_wrong_bytes_never_replaces_a_stored_object(object_store: ObjectStore) -> None:
    data = b"the real bytes"
    digest = sha256(data)
    object_store.put(io.BytesIO(data))
    overwrite_behind_the_store(object_store, digest, b"bit rot!!!!!!!")

    with pytest.raises(DigestMismatch):
        object_store.put(io.BytesIO(b"other bytes"), expected_digest=digest)

    assert read_behind_the_store(object_store, digest) == b"bit rot!!!!!!!"
    assert_nothing_staged(object_store)


# --- refusals leave nothing ------------------------------------------------------------------


def test_digest_mismatch_raises_and_keeps_nothing(object_store: ObjectStore) -> None:
    data = b"what was sent"
    claimed = sha256(b"what was promised")

    with pytest.raises(DigestMismatch) as caught:
        object_store.put(io.BytesIO(data), expected_digest=claimed)

    assert claimed in caught.value.detail
    assert sha256(data) in caught.value.detail
    assert object_store.stat(claimed) is None
    assert object_store.stat(sha256(data)) is None
    assert stored_names(object_store) == []
    assert_nothing_staged(object_store)


def test_too_large_raises_as_soon_as_the_limit_is_crossed(object_store: ObjectStore) -> None:
    # Far larger than the limit: a store that read it all before refusing would be caught by
    # the bytes_read bound below.
    source = GeneratedStream(64 * MiB)
    limit = 2 * MiB + 7

    with pytest.raises(TooLarge) as caught:
        object_store.put(source, max_bytes=limit)

    assert str(limit) in caught.value.detail
    assert source.bytes_read <= limit + 2 * MiB
    assert stored_names(object_store) == []
    assert_nothing_staged(object_store)


def test_exactly_max_bytes_is_accepted(object_store: ObjectStore) -> None:
    data = b"x" * 1000
    assert object_store.put(io.BytesIO(data), max_bytes=1000).created is True
    assert object_store.stat(sha256(data)) == StoredObject(sha256(data), 1000)


def test_a_source_that_fails_midway_leaves_nothing(object_store: ObjectStore) -> None:
    class Broken(io.RawIOBase):
        calls = 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            self.calls += 1
            if self.calls > 2:
                raise ConnectionResetError("client went away")
            return b"y" * 1024

    with pytest.raises(ConnectionResetError):
        object_store.put(Broken())

    assert stored_names(object_store) == []
    assert_nothing_staged(object_store)


# --- misses and deletes ----------------------------------------------------------------------


def test_a_miss_is_none_for_stat_and_open_and_false_for_fetch(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    digest = sha256(b"never stored")
    dest_dir = tmp_path / "fetched"
    dest_dir.mkdir()
    dest = dest_dir / "model.neff"

    assert object_store.stat(digest) is None
    assert object_store.open(digest) is None
    assert object_store.fetch_to_path(digest, dest) is False
    assert list(dest_dir.iterdir()) == []


def test_delete_removes_and_is_idempotent(object_store: ObjectStore) -> None:
    data = b"short-lived"
    digest = sha256(data)
    object_store.put(io.BytesIO(data))

    object_store.delete(digest)
    assert object_store.stat(digest) is None
    object_store.delete(digest)  # already gone
    object_store.delete(sha256(b"never stored"))
    assert object_store.stat(digest) is None
    # And it can be stored again afterwards.
    assert object_store.put(io.BytesIO(data)).created is True


# --- digests are checked ---------------------------------------------------------------------

BAD_DIGESTS = [
    "",
    "abc",
    "A" * 64,  # uppercase
    "g" * 64,
    "0" * 63,
    "0" * 65,
    "sha256:" + "0" * 64,
    "../" + "0" * 61,
    " " + "0" * 63,
]


@pytest.mark.parametrize("bad", BAD_DIGESTS, ids=repr)
def test_invalid_digests_are_refused_by_every_method(
    object_store: ObjectStore, tmp_path: Path, bad: str
) -> None:
    calls = {
        "stat": lambda: object_store.stat(bad),
        "open": lambda: object_store.open(bad),
        "fetch_to_path": lambda: object_store.fetch_to_path(bad, tmp_path / "out"),
        "delete": lambda: object_store.delete(bad),
        "presigned_url": lambda: object_store.presigned_url(bad, 60),
        "put": lambda: object_store.put(io.BytesIO(b"data"), expected_digest=bad),
        "verify": lambda: object_store.verify(bad),
        "quarantine": lambda: object_store.quarantine(bad),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidDigest) as caught:
            call()
        assert repr(bad) in caught.value.detail, name
    assert stored_names(object_store) == []
    assert not (tmp_path / "out").exists()


# --- integrity -------------------------------------------------------------------------------


def test_corrupted_object_fails_fetch_and_leaves_no_dest(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    data = b"the real bytes" * 100
    digest = sha256(data)
    object_store.put(io.BytesIO(data))
    overwrite_behind_the_store(object_store, digest, b"bit rot" * 100)
    dest = tmp_path / "out" / "model.neff"
    dest.parent.mkdir()

    with pytest.raises(CorruptObject) as caught:
        object_store.fetch_to_path(digest, dest)

    assert digest in caught.value.detail
    assert list(dest.parent.iterdir()) == []


def test_verify_hashes_the_stored_bytes_and_changes_nothing(object_store: ObjectStore) -> None:
    good, bad = b"sound bytes" * 100, b"damaged bytes" * 100
    object_store.put(io.BytesIO(good))
    object_store.put(io.BytesIO(bad))
    overwrite_behind_the_store(object_store, sha256(bad), b"bit rot")
    names = stored_names(object_store)

    sound = object_store.verify(sha256(good))
    damaged = object_store.verify(sha256(bad))

    assert sound == Verification(sha256(good), len(good), sha256(good)) and sound.ok
    assert damaged == Verification(sha256(bad), len(b"bit rot"), sha256(b"bit rot"))
    assert not damaged.ok
    assert object_store.verify(sha256(b"never stored")) is None
    assert stored_names(object_store) == names
    assert read_behind_the_store(object_store, sha256(bad)) == b"bit rot"


def test_iter_objects_lists_every_object_with_its_size_and_nothing_else(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    assert list(object_store.iter_objects()) == []
    blobs = [b"one", b"two" * 1000, b""]
    # Whole seconds: S3 servers keep LastModified to the second.
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    for data in blobs:
        object_store.put(io.BytesIO(data))
    # Not objects: an upload in progress, a quarantined object, a stray name in the layout.
    (object_store.staging_dir / "upload-x.part").write_bytes(b"partial")
    quarantined = b"quarantined"
    object_store.put(io.BytesIO(quarantined))
    overwrite_behind_the_store(object_store, sha256(quarantined), b"rot")
    assert object_store.quarantine(sha256(quarantined)) is not None
    if isinstance(object_store, FilesystemObjectStore):
        (object_store.root / "sha256" / "ab" / "notes.txt").parent.mkdir(parents=True, exist_ok=True)
        (object_store.root / "sha256" / "ab" / "notes.txt").write_bytes(b"stray")
    else:
        assert isinstance(object_store, S3ObjectStore)
        object_store.client.put_object(Bucket=object_store.bucket, Body=b"stray",
                                       Key=raw_name(object_store, "sha256/ab/notes.txt"))

    listed = sorted(object_store.iter_objects(), key=lambda o: o.digest)
    after = datetime.now(UTC) + timedelta(seconds=1)

    assert [(o.digest, o.size) for o in listed] == sorted((sha256(d), len(d)) for d in blobs)
    # When each was written, which the GC's orphan sweep compares with its grace period.
    assert all(o.modified_at is not None and before <= o.modified_at <= after for o in listed), listed


def test_quarantine_moves_a_corrupt_object_aside_and_the_next_put_recreates_it(
    object_store: ObjectStore,
) -> None:
    data = b"a NEFF" * 300
    digest = sha256(data)
    object_store.put(io.BytesIO(data))
    overwrite_behind_the_store(object_store, digest, flip_last_byte(data))

    where = object_store.quarantine(digest)

    assert where is not None and quarantine_key(digest) in where
    # It reads as missing (so clients upload it again), and its bytes are kept for inspection.
    assert object_store.stat(digest) is None
    assert object_store.open(digest) is None
    assert read_quarantined(object_store, digest) == flip_last_byte(data)
    assert stored_names(object_store) == [raw_name(object_store, quarantine_key(digest))]
    assert object_store.put(io.BytesIO(data)) == PutResult(digest, len(data), created=True)
    assert object_store.verify(digest) == Verification(digest, len(data), digest)


def test_quarantine_leaves_a_sound_object_and_a_miss_alone(object_store: ObjectStore) -> None:
    data = b"sound"
    object_store.put(io.BytesIO(data))

    assert object_store.quarantine(sha256(data)) is None
    assert object_store.quarantine(sha256(b"never stored")) is None

    assert read_behind_the_store(object_store, sha256(data)) == data
    assert stored_names(object_store) == [raw_name(object_store, f"sha256/{sha256(data)[:2]}/{sha256(data)}")]


def test_large_object_streams_through_in_chunks(object_store: ObjectStore, tmp_path: Path) -> None:
    size = 20 * MiB
    digest, _ = generated_bytes_digest(size)
    source = GeneratedStream(size)

    result = object_store.put(source, expected_digest=digest)

    assert result == PutResult(digest, size, created=True)
    assert source.largest_read <= 8 * MiB
    assert object_store.stat(digest) == StoredObject(digest, size)
    dest = tmp_path / "big.bin"
    assert object_store.fetch_to_path(digest, dest) is True
    hasher = hashlib.sha256()
    with open(dest, "rb") as fetched:
        while chunk := fetched.read(MiB):
            hasher.update(chunk)
    assert hasher.hexdigest() == digest
    assert dest.stat().st_size == size
    assert_nothing_staged(object_store)


# --- presigned URLs --------------------------------------------------------------------------


def test_presigned_url_serves_the_bytes_on_s3_and_is_none_for_a_folder(
    object_store: ObjectStore,
) -> None:
    data = b"download me"
    digest = sha256(data)
    object_store.put(io.BytesIO(data))

    url = object_store.presigned_url(digest, 60, filename="model v1.neff")

    if isinstance(object_store, FilesystemObjectStore):
        assert url is None
        return
    assert url is not None
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == data
    assert 'filename="model v1.neff"' in response.headers["content-disposition"]
    assert response.headers["content-disposition"].startswith("attachment")
    without_name = httpx.get(object_store.presigned_url(digest, 60) or "")
    assert without_name.content == data


# --- readiness -------------------------------------------------------------------------------


def test_check_passes_on_a_working_store(object_store: ObjectStore) -> None:
    object_store.check()
    assert_nothing_staged(object_store)


def test_probe_stores_one_small_object_and_reads_it_back(object_store: ObjectStore) -> None:
    from neffcache.storage.base import PROBE_BYTES

    object_store.probe()
    digest = hashlib.sha256(PROBE_BYTES).hexdigest()
    stored = object_store.stat(digest)
    assert stored is not None and stored.size == len(PROBE_BYTES)
    object_store.probe()  # again: the stored copy is read back and verified, nothing new written
    assert [o.digest for o in object_store.iter_objects()].count(digest) == 1
    assert_nothing_staged(object_store)


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_check_raises_storage_error_when_the_store_is_unusable(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    if isinstance(object_store, FilesystemObjectStore):
        # A root that is a regular file: nothing can be created under it.
        not_a_folder = tmp_path / "a-file"
        not_a_folder.write_bytes(b"")
        broken = open_store(Settings(storage_url=str(not_a_folder)))
    else:
        assert isinstance(object_store, S3ObjectStore)
        broken = open_store(
            Settings(
                storage_url=f"s3://{object_store.bucket}/x",
                s3_endpoint_url=f"http://127.0.0.1:{_unused_port()}",
                s3_access_key_id="k",
                s3_secret_access_key="s",
            )
        )

    with pytest.raises(StorageError) as caught:
        broken.check()
    assert caught.value.detail
    with pytest.raises(StorageError):
        broken.stat(sha256(b"anything"))
    with pytest.raises(StorageError):
        broken.put(io.BytesIO(b"anything"))


def test_check_raises_for_a_missing_bucket(seaweedfs: SeaweedFS) -> None:
    overrides = s3_settings_overrides(seaweedfs, "p")
    overrides["storage_url"] = "s3://no-such-bucket-here/p"
    store = open_store(Settings(**overrides))
    with pytest.raises(StorageError) as caught:
        store.check()
    assert "no-such-bucket-here" in caught.value.detail


# --- open_store ------------------------------------------------------------------------------


def test_open_store_reads_the_url(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    plain = open_store(Settings(storage_url=str(tmp_path / "plain" / "objects")))
    assert isinstance(plain, FilesystemObjectStore)
    assert (tmp_path / "plain" / "objects").is_dir()

    file_url = open_store(Settings(storage_url=f"file://{tmp_path / 'viaurl'}"))
    assert isinstance(file_url, FilesystemObjectStore)
    assert file_url.root == tmp_path / "viaurl"

    nested = open_store(Settings(**s3_settings_overrides(seaweedfs, "a/b/")))
    assert isinstance(nested, S3ObjectStore)
    assert (nested.bucket, nested.prefix) == ("neffcache-test", "a/b")
    assert nested.key_for("0" * 64) == "a/b/sha256/00/" + "0" * 64

    overrides = s3_settings_overrides(seaweedfs, "")
    overrides["storage_url"] = "s3://neffcache-test"
    bare = open_store(Settings(**overrides))
    assert isinstance(bare, S3ObjectStore)
    assert bare.key_for("0" * 64) == "sha256/00/" + "0" * 64
    data = b"at the bucket root"
    bare.put(io.BytesIO(data))
    assert bare.stat(sha256(data)) == StoredObject(sha256(data), len(data))
    bare.delete(sha256(data))

    with pytest.raises(StorageError):
        open_store(Settings(storage_url="gs://bucket/x"))
    with pytest.raises(StorageError):
        open_store(Settings(storage_url="s3:///no-bucket"))


def test_importing_the_storage_package_does_not_import_boto3() -> None:
    code = "import sys, neffcache.storage; print('boto3' in sys.modules, 'botocore' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.split() == ["False", "False"]
