"""A README guarantee about `neffcache pull` that no other test showed on its own, in process
against test_pull.py's stand-in service: a disk that fills up while the files download (the
write fails with ENOSPC) leaves DEST exactly as the pull found it, and the pull fails in one line."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from neffcache.client.pull import BY_NAME
from neffcache.errors import UsageError
from tests.support.snapshot import snapshot
from tests.unit.client.test_pull import FakeService, named, run, service  # noqa: F401 - the fixture


def test_a_disk_that_fills_during_the_downloads_leaves_dest_exactly_as_it_was(
        service: FakeService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    first = service.publish(1, **{"model.neff": b"first neff", "compile.log": b"log 1"})
    dest = tmp_path / "neffs"
    run(service, [named(first, "encoder")], dest)
    (dest / first.key / "compile.log").write_bytes(b"damaged")  # a wrong file a good pull would replace
    before = snapshot(dest)
    second = service.publish(2, **{"model.neff": b"second neff", "compile.log": b"log 2"})

    real_fsync, synced = os.fsync, []

    def full_disk(fd: int) -> None:  # the second file written: the disk is full
        synced.append(fd)
        if len(synced) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(UsageError) as failed:
        run(service, [named(first, "encoder"), named(second, "decoder")], dest)
    assert "No space left on device" in failed.value.detail and "\n" not in failed.value.detail
    assert snapshot(dest) == before

    # Room again: the same pull lands whole.
    monkeypatch.setattr(os, "fsync", real_fsync)
    run(service, [named(first, "encoder"), named(second, "decoder")], dest)
    assert (dest / first.key / "compile.log").read_bytes() == b"log 1"
    assert (dest / BY_NAME / "decoder" / "model.neff").read_bytes() == b"second neff"
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]
