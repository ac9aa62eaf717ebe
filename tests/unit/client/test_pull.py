"""A pull into DEST, in process against a stand-in service: files reachable by the spec entry's
name (DEST/by-name/<name>/<file>), and all or nothing (a failed pull leaves DEST as it found it).

The same behaviours through the command against the running stack are in test_cli_pull.py."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from neffcache.client import download
from neffcache.client.download import download_all, pull_to_dest
from neffcache.client.lockfile import LOCK_FILE_NAME, lock_document
from neffcache.client.pull import BY_NAME, PullPlan, Wanted, plan, resolve
from neffcache.errors import IntegrityFailure, NotFound, UsageError
from tests.support.snapshot import snapshot
from tests.unit.neffcache.test_spec import SAFE as SAFE_PUBLISHED
from tests.unit.neffcache.test_spec import UNSAFE as UNSAFE_PUBLISHED


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(n: int) -> str:
    return _sha(f"artifact {n}".encode())


class _Response:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers: dict[str, str] = {}

    def iter_raw(self) -> Iterator[bytes]:
        yield self.data[: len(self.data) // 2]
        yield self.data[len(self.data) // 2:]


class FakeService:
    """What pull asks of NeffcacheClient: artifact (by key or prefix) and open_file. `served`
    overrides the bytes of one (key, name), as a corrupted object store would."""

    def __init__(self) -> None:
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.contents: dict[tuple[str, str], bytes] = {}
        self.served: dict[tuple[str, str], bytes] = {}

    def publish(self, n: int, **files: bytes) -> Wanted:
        key = _key(n)
        self.artifacts[key] = {
            "key": key,
            "manifest": {"runtime": {"name": "neuron-runtime", "version": "2.34.10.0"}},
            "files": [{"name": name, "sha256": _sha(data), "size": len(data)} for name, data in files.items()],
        }
        for name, data in files.items():
            self.contents[key, name] = data
        return Wanted(key, self.artifacts[key])

    def artifact(self, key: str) -> dict[str, Any]:
        found = [k for k in self.artifacts if k.startswith(key)]
        if len(found) != 1:
            raise NotFound(f"artifact {key} does not exist")
        return self.artifacts[found[0]]

    @contextmanager
    def open_file(self, key: str, name: str) -> Iterator[tuple[_Response, str | None]]:
        yield _Response(self.served.get((key, name), self.contents[key, name])), None


def named(item: Wanted, *names: str) -> Wanted:
    return Wanted(item.key, item.artifact, [f"spec ({n})" for n in names], list(names))


def run(service: FakeService, wanted: list[Wanted], dest: Path, lock: bool = True) -> PullPlan:
    doc = lock_document("http://stand-in", wanted) if lock else None
    return pull_to_dest(service, wanted, dest, 4, lambda n: None, lock_doc=doc)  # type: ignore[arg-type]


@pytest.fixture
def service() -> FakeService:
    return FakeService()


# --- by name -----------------------------------------------------------------------------------
def test_named_entries_are_reachable_by_name(service: FakeService, tmp_path: Path) -> None:
    encoder = service.publish(1, **{"model.neff": b"encoder neff", "compile.log": b"ok\n"})
    decoder = service.publish(2, **{"model.neff": b"decoder neff"})
    dest = tmp_path / "neffs"
    files = run(service, [named(encoder, "encoder-b1", "encoder"), named(decoder, "decoder-b1")], dest)
    assert {f.status for f in files} == {"downloaded"}
    assert (dest / BY_NAME / "encoder-b1" / "model.neff").read_bytes() == b"encoder neff"
    assert (dest / BY_NAME / "encoder" / "compile.log").read_bytes() == b"ok\n"
    assert (dest / BY_NAME / "decoder-b1" / "model.neff").read_bytes() == b"decoder neff"
    # Relative links, so the volume can be mounted anywhere.
    assert os.readlink(dest / BY_NAME / "decoder-b1") == os.path.join("..", decoder.key)
    assert sorted(p.name for p in dest.iterdir()) == sorted([encoder.key, decoder.key, BY_NAME, LOCK_FILE_NAME])

    # A name pulled again for another artifact now reaches that one; the others stay.
    encoder2 = service.publish(3, **{"model.neff": b"encoder neff, recompiled"})
    run(service, [named(encoder2, "encoder-b1")], dest)
    assert (dest / BY_NAME / "encoder-b1" / "model.neff").read_bytes() == b"encoder neff, recompiled"
    assert (dest / BY_NAME / "encoder" / "model.neff").read_bytes() == b"encoder neff"


def test_without_symlinks_the_names_are_folders_of_links_or_copies(service: FakeService, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    def no_symlinks(*args: Any, **kwargs: Any) -> None:
        raise OSError(1, "Operation not permitted")

    def no_hard_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    monkeypatch.setattr(os, "link", no_hard_links)
    item = service.publish(1, **{"model.neff": b"neff bytes", "compile.log": b"log"})
    dest = tmp_path / "neffs"
    run(service, [named(item, "encoder")], dest)
    folder = dest / BY_NAME / "encoder"
    assert folder.is_dir() and not folder.is_symlink()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == {"model.neff": b"neff bytes", "compile.log": b"log"}
    # Pulled again (e.g. a restarted pod), the copies are rebuilt, and right.
    again = run(service, [named(item, "encoder")], dest)
    assert {f.status for f in again} == {"present"}
    assert (folder / "model.neff").read_bytes() == b"neff bytes"


@pytest.mark.parametrize("bad", ["a/b", "..", ".", ".hidden", "", "x\ny", "back\\slash", "é" * 128])
def test_a_name_that_is_not_a_plain_folder_name_is_refused_before_anything_is_written(
        service: FakeService, tmp_path: Path, bad: str) -> None:
    item = service.publish(1, **{"model.neff": b"neff"})
    dest = tmp_path / "neffs"
    with pytest.raises(UsageError) as refused:
        run(service, [named(item, bad)], dest)
    assert repr(bad) in refused.value.detail and BY_NAME in refused.value.detail
    assert not dest.exists()


# The service refuses these at publish (neffcache.file_names.check_file_name): a pull refuses them too,
# whatever a service answers, by the same rule.
UNSAFE_FILE_NAMES = [name for name, _ in UNSAFE_PUBLISHED] + ["con", "NUL.neff", "-", "--help", "C:model.neff"]


@pytest.mark.parametrize("bad", UNSAFE_FILE_NAMES, ids=[repr(n)[:40] for n in UNSAFE_FILE_NAMES])
def test_an_artifact_file_name_unsafe_on_disk_is_refused_before_anything_is_written(
        service: FakeService, tmp_path: Path, bad: str) -> None:
    good = service.publish(1, **{"model.neff": b"neff"})
    item = service.publish(2, **{"model.neff": b"neff 2", bad: b"payload"})
    dest = tmp_path / "neffs"
    with pytest.raises(IntegrityFailure) as refused:
        run(service, [good, item], dest)
    line = refused.value.detail
    assert refused.value.exit_code == 5 and "\n" not in line
    assert item.key in line and repr(bad[:40]) in line and "nothing was pulled" in line
    assert not dest.exists()
    # Outside DEST too: nothing was written where the name points.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_file_names_that_are_one_file_on_a_case_insensitive_file_system_are_refused(
        service: FakeService, tmp_path: Path) -> None:
    item = service.publish(1, **{"model.neff": b"neff", "MODEL.neff": b"another neff"})
    with pytest.raises(IntegrityFailure) as refused:
        run(service, [item], tmp_path / "neffs")
    assert "'MODEL.neff'" in refused.value.detail and "ignoring case" in refused.value.detail
    assert not (tmp_path / "neffs").exists()


@pytest.mark.parametrize("good", SAFE_PUBLISHED)
def test_every_file_name_the_service_publishes_is_pulled(service: FakeService, tmp_path: Path, good: str) -> None:
    item = service.publish(1, **{good: b"bytes"})
    run(service, [item], tmp_path / "neffs")
    assert (tmp_path / "neffs" / item.key / good).read_bytes() == b"bytes"


def test_one_name_for_two_artifacts_is_refused(service: FakeService, tmp_path: Path) -> None:
    a, b = service.publish(1, **{"model.neff": b"a"}), service.publish(2, **{"model.neff": b"b"})
    with pytest.raises(UsageError) as refused:
        plan([named(a, "model"), named(b, "model")], tmp_path / "neffs")
    assert a.key in refused.value.detail and b.key in refused.value.detail
    assert not (tmp_path / "neffs").exists()


def test_plan_and_download_all_as_the_command_calls_them_link_names_too(service: FakeService, tmp_path: Path) -> None:
    # The command calls plan() then download_all(client, files, parallel, advance), then writes the lock.
    item = service.publish(1, **{"model.neff": b"neff"})
    dest = tmp_path / "neffs"
    files = plan([named(item, "encoder")], dest)
    download_all(service, files, 2, lambda n: None)  # type: ignore[arg-type]
    assert [(f.path, f.status) for f in files] == [(dest / item.key / "model.neff", "downloaded")]
    assert (dest / BY_NAME / "encoder" / "model.neff").read_bytes() == b"neff"
    assert not (dest / LOCK_FILE_NAME).exists()


# --- all or nothing ----------------------------------------------------------------------------
def test_a_corrupt_object_leaves_a_new_dest_absent(service: FakeService, tmp_path: Path) -> None:
    good = service.publish(1, **{"model.neff": b"good neff", "compile.log": b"log"})
    bad = service.publish(2, **{"model.neff": b"other neff", "compile.log": b"log 2"})
    service.served[bad.key, "model.neff"] = b"other nefF"  # same size, one byte off
    dest = tmp_path / "deep" / "neffs"
    with pytest.raises(IntegrityFailure) as failed:
        run(service, [named(good, "good"), named(bad, "bad")], dest)
    assert "model.neff" in failed.value.detail and bad.key in failed.value.detail
    assert not (tmp_path / "deep").exists()


def test_a_corrupt_object_leaves_an_earlier_pull_exactly_as_it_was(service: FakeService, tmp_path: Path) -> None:
    first = service.publish(1, **{"model.neff": b"first neff", "compile.log": b"log 1"})
    dest = tmp_path / "neffs"
    run(service, [named(first, "encoder")], dest)
    (dest / "unrelated.txt").write_text("the pod's own file")
    (dest / first.key / "compile.log").write_bytes(b"damaged")  # a wrong file a good pull would replace
    before = snapshot(dest)

    second = service.publish(2, **{"model.neff": b"second neff"})
    renamed = service.publish(3, **{"model.neff": b"third neff", "compile.log": b"log 3"})
    service.served[renamed.key, "compile.log"] = b"log 4"
    with pytest.raises(IntegrityFailure):
        run(service, [named(first, "encoder", "alias"), named(second, "decoder"), named(renamed, "encoder-v2")], dest)
    assert snapshot(dest) == before

    # With the object repaired, the same pull lands whole, and replaces the damaged file.
    del service.served[renamed.key, "compile.log"]
    run(service, [named(first, "encoder", "alias"), named(second, "decoder"), named(renamed, "encoder-v2")], dest)
    assert (dest / first.key / "compile.log").read_bytes() == b"log 1"
    assert (dest / BY_NAME / "alias" / "model.neff").read_bytes() == b"first neff"
    assert (dest / "unrelated.txt").read_text() == "the pod's own file"
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]


def test_a_failure_while_moving_into_place_puts_back_what_was_replaced(service: FakeService, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    old = service.publish(1, **{"model.neff": b"old neff"})
    dest = tmp_path / "neffs"
    run(service, [named(old, "encoder")], dest)
    (dest / old.key / "model.neff").write_bytes(b"damaged!")
    before = snapshot(dest)
    new = service.publish(2, **{"model.neff": b"new neff"})

    def full_disk(path: Path, doc: dict[str, Any]) -> None:
        raise UsageError(f"cannot write the lock file {path}: No space left on device")

    # The last step fails: the new key folder, the repaired file and the re-pointed name are undone.
    monkeypatch.setattr("neffcache.client.lockfile.write_lock", full_disk)
    with pytest.raises(UsageError):
        run(service, [named(old, "other"), named(new, "encoder")], dest)
    assert snapshot(dest) == before


def test_interrupted_downloads_leave_dest_as_found(service: FakeService, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    item = service.publish(1, **{"model.neff": b"neff", "compile.log": b"log"})
    dest = tmp_path / "neffs"
    dest.mkdir()
    (dest / "keep").write_text("x")
    before = snapshot(dest)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "_download_parallel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(service, [named(item, "encoder")], dest)
    assert snapshot(dest) == before


# --- keys named by a prefix --------------------------------------------------------------------
def test_a_key_prefix_resolves_to_the_whole_key(service: FakeService, tmp_path: Path) -> None:
    item = service.publish(1, **{"model.neff": b"neff"})
    [wanted] = resolve(service, [item.key[:12], item.key], [])  # type: ignore[arg-type]
    assert wanted.key == item.key and wanted.requested_as == [item.key[:12], item.key]
    files = run(service, [wanted], tmp_path / "neffs")
    assert [f.path for f in files] == [tmp_path / "neffs" / item.key / "model.neff"]


def test_a_service_answering_another_key_is_refused(service: FakeService) -> None:
    item = service.publish(1, **{"model.neff": b"neff"})
    service.artifacts[item.key] = {**item.artifact, "key": _key(9)}
    with pytest.raises(IntegrityFailure):
        resolve(service, [item.key[:8]], [])  # type: ignore[arg-type]
