"""Pins from the command line, against the running stack: `lock --pin` pins what the lock names,
`pin ls` shows it, `pin rm` removes it, and each refusal exits with its code in one line."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.api import published
from tests.support.cli import client_env, run_cli


@pytest.fixture
def pin_names(api: httpx.Client) -> Iterator[list[str]]:
    """Names for this test's pins; whichever are left at the end are removed (with the admin token)."""
    made: list[str] = []

    def name() -> str:
        made.append(f"test-{uuid.uuid4().hex[:10]}")
        return made[-1]

    names = [name() for _ in range(3)]
    yield names
    for left in names:
        api.delete(f"/v1/pins/{left}")


def _bytes(artifact: dict[str, Any]) -> int:
    return sum(int(f["size"]) for f in artifact["files"])


def test_lock_pin_pins_what_the_lock_names_and_pin_ls_and_rm_show_and_remove_it(
        cli, running, tokens: dict[str, str], api: httpx.Client, pin_names: list[str], tmp_path: Path) -> None:
    artifacts = [published(api)[1] for _ in range(2)]
    keys = [a["key"] for a in artifacts]
    deploy, other, _ = pin_names
    lock = tmp_path / "deploy.lock.json"

    locked = cli("lock", keys[0], keys[1][:12], "-o", str(lock), "--pin", deploy, "--pin-expires-in", "30d")
    assert locked.rc == 0, locked.stderr
    assert "locked 2 artifact(s)" in locked.stderr
    assert "pinned 2 artifact(s) (" in locked.stderr and f"under {deploy}, until " in locked.stderr

    listed = cli("pin", "ls", "--json")
    assert listed.rc == 0, listed.stderr
    mine = {p["name"]: p for p in listed.json()["pins"]}[deploy]
    assert (mine["artifacts"], mine["missing"], mine["bytes"], mine["expired"]) == (2, 0, sum(map(_bytes, artifacts)),
                                                                                   False)
    assert mine["owner"].startswith("test-write-") and mine["expires_at"]
    one = cli("pin", "ls", deploy, "--json").json()
    assert [(e["key"], e["exists"], e["bytes"]) for e in one["entries"]] == sorted(
        (a["key"], True, _bytes(a)) for a in artifacts)
    table = cli("pin", "ls", deploy)
    assert table.rc == 0 and all(key in table.stdout for key in keys)

    # The same artifacts by the lock file, under another name, by the same token.
    by_lock = cli("pin", "add", other, "--lock", str(lock), "--note", "release 7", "--json")
    assert by_lock.rc == 0, by_lock.stderr
    assert (by_lock.json()["artifacts"], by_lock.json()["note"], by_lock.json()["expires_at"]) == (2, "release 7", None)

    # Another token (publish, not admin) may not remove the write token's pin; the owner may.
    theirs = run_cli(["pin", "rm", deploy], client_env(running.url, tokens["publish"]))
    assert theirs.rc == 6 and "belongs to" in theirs.one_line_error()
    removed = cli("pin", "rm", deploy, "--json")
    assert removed.rc == 0 and removed.json()["name"] == deploy
    assert deploy not in {p["name"] for p in cli("pin", "ls", "--json").json()["pins"]}
    again = cli("pin", "rm", deploy)
    assert again.rc == 4 and deploy in again.one_line_error()
    # An admin token removes anyone's.
    by_admin = run_cli(["pin", "rm", other], client_env(running.url, tokens["admin"]))
    assert by_admin.rc == 0 and f"removed pin {other}" in by_admin.stdout


def test_a_pin_the_service_refuses_exits_with_its_code_in_one_line(
        cli, running, tokens: dict[str, str], api: httpx.Client, pin_names: list[str], tmp_path: Path) -> None:
    key = published(api)[1]["key"]
    name = pin_names[0]
    cases = [
        (["pin", "add", name, "e" * 64], None, 4, "e" * 64),
        (["pin", "add", "no good", key], None, 2, "name:"),
        (["pin", "add", name, key, "--expires-in", "soon"], None, 2, "expires_in:"),
        (["pin", "add", name, key], tokens["read"], 6, "needs 'write'"),
        (["pin", "add", name], None, 2, "nothing to pin"),
        (["pin", "ls", name], None, 4, name),
    ]
    for args, token, code, named in cases:
        env = client_env(running.url, token) if token else None
        result = run_cli(args, env) if env else cli(*args)
        assert result.rc == code, (args, result.stderr)
        assert named in result.one_line_error(), (args, result.stderr)
    assert name not in {p["name"] for p in cli("pin", "ls", "--json").json()["pins"]}

    # lock --pin: the lock is written first; a refused pin fails the command, saying so.
    lock = tmp_path / "deploy.lock.json"
    refused = cli("lock", key, "-o", str(lock), "--pin", "no good")
    assert refused.rc == 2 and lock.is_file()
    assert f"the lock was written to {lock}, but not pinned as no good" in refused.last_stderr_line()
    usage = cli("lock", key, "-o", str(tmp_path / "other.json"), "--pin-expires-in", "1d")
    assert usage.rc == 2 and "give --pin too" in usage.one_line_error()
    assert not (tmp_path / "other.json").exists()
