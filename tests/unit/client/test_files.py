"""client/files.py: the client's own files are read with one readable error and written whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from neffcache.client.files import read_text, write_atomically
from neffcache.errors import UsageError


def test_read_text_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"^lock file {tmp_path}/nope.json does not exist$"):
        read_text(tmp_path / "nope.json", "lock file")


def test_read_text_names_what_cannot_be_read(tmp_path: Path) -> None:
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UsageError, match="^spec file .*binary.yaml: cannot read it"):
        read_text(tmp_path / "binary.yaml", "spec file")


def test_write_atomically_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "neffcache.lock.json"
    write_atomically(target, b"first", "the lock file")
    write_atomically(target, b"second", "the lock file")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["neffcache.lock.json"]


def test_write_atomically_into_a_file_is_one_usage_error(tmp_path: Path) -> None:
    (tmp_path / "not-a-folder").write_text("x")
    with pytest.raises(UsageError, match="^cannot write the lock file .*not-a-folder/lock.json: "):
        write_atomically(tmp_path / "not-a-folder" / "lock.json", b"{}", "the lock file")
    assert (tmp_path / "not-a-folder").read_text() == "x"
