"""`neffcache-admin token ...` in process, against SQLite made by the migrations: tokens with a
lifetime, what `token list` shows, and the bootstrap token's name."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pytest

from neffcache.db.models import ApiToken, utcnow
from neffcache.db.session import Database
from tests.support.in_process import run_admin


def test_create_with_a_lifetime_and_list_shows_expiry_and_last_use(
        database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run_admin(capsys, monkeypatch, "token", "create", "--name", "ci", "--scope", "write",
                       "--namespace", "team-a", "--expires-in", "30d", "--json")
    assert code == 0
    made = json.loads(out)
    expires_at = datetime.fromisoformat(made["expires_at"])
    assert timedelta(days=30) - timedelta(minutes=1) < expires_at - utcnow() <= timedelta(days=30)

    code, out, err = run_admin(capsys, monkeypatch, "token", "create", "--name", "ops", "--scope", "admin")
    assert code == 0 and out.startswith("nfc_") and "no longer accepts NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN" in err
    used = utcnow().replace(microsecond=0)
    db = Database(database)
    with db.session() as session:
        ops = session.get(ApiToken, "ops")
        assert ops is not None
        ops.last_used_at, ops.expires_at = used, used - timedelta(hours=1)
    db.dispose()

    code, out, _ = run_admin(capsys, monkeypatch, "token", "list", "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows["ci"]["expires_at"] == made["expires_at"] and rows["ci"]["last_used_at"] is None
    assert rows["ci"]["expired"] is False and rows["ops"]["expired"] is True
    assert rows["ci"]["namespaces"] == ["team-a"] and rows["ops"]["namespaces"] == ["*"]
    assert rows["ops"]["last_used_at"] == used.isoformat()

    code, out, _ = run_admin(capsys, monkeypatch, "token", "list")
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "SCOPE", "NAMESPACES", "CREATED", "EXPIRES", "LAST", "USED"]
    ci_line, ops_line = lines
    assert ci_line.split()[:3] == ["ci", "write", "team-a"] and ops_line.split()[:3] == ["ops", "admin", "*"]
    assert ci_line.split()[0] == "ci" and expires_at.isoformat(timespec="seconds") in ci_line
    assert ci_line.split()[-1] == "never"  # never used
    assert ops_line.split()[0] == "ops" and used.isoformat() in ops_line and ops_line.endswith("(expired)")


def test_bad_lifetimes_and_the_bootstrap_name_are_refused_in_one_line(
        database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run_admin(capsys, monkeypatch, "token", "create", "--name", "ci", "--expires-in", "30x")
    assert code == 2 and out == "" and err.strip().splitlines() == [
        "neffcache-admin: expires-in: '30x' is not a duration such as 90m, 12h, 30d or 2w"]
    code, _, err = run_admin(capsys, monkeypatch, "token", "create", "--name", "bootstrap-admin", "--scope", "admin")
    assert code == 2 and "NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN" in err
    code, _, err = run_admin(capsys, monkeypatch, "token", "revoke", "bootstrap-admin")
    assert code == 4 and "refused once an admin token exists" in err
    code, out, _ = run_admin(capsys, monkeypatch, "token", "list", "--json")
    assert json.loads(out) == []


@pytest.mark.parametrize(("args", "in_error"), [
    (["--scope", "write"], "--namespace NAME (repeat for several) or --all-namespaces"),
    (["--scope", "read", "--namespace", "a", "--all-namespaces"], "not both"),
    (["--scope", "admin", "--namespace", "a"], "an admin token acts in every namespace"),
    (["--scope", "publish", "--namespace", "Team-A"], "'Team-A' is not a namespace"),
    (["--scope", "write", "--namespace", "*"], "'*' is not a namespace"),
    (["--scope", "write", "--namespace", ""], "'' is not a namespace"),
    (["--scope", "root", "--all-namespaces"], "scope: 'root' is not one of read, write, publish, admin"),
])
def test_a_token_must_say_where_it_acts(database: str, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch, args: list[str], in_error: str) -> None:
    code, out, err = run_admin(capsys, monkeypatch, "token", "create", "--name", "ci", *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and in_error in err
    code, out, _ = run_admin(capsys, monkeypatch, "token", "list", "--json")
    assert json.loads(out) == []


def test_namespaces_are_stored_sorted_once_and_all_namespaces_is_a_star(
        database: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    made = {}
    for name, args in {"teams": ["--scope", "publish", "--namespace", "b", "--namespace", "a", "--namespace", "b"],
                       "everywhere": ["--scope", "read", "--all-namespaces"], "ops": ["--scope", "admin"]}.items():
        code, out, _ = run_admin(capsys, monkeypatch, "token", "create", "--name", name, *args, "--json")
        assert code == 0
        made[name] = json.loads(out)["namespaces"]
    assert made == {"teams": ["a", "b"], "everywhere": ["*"], "ops": ["*"]}
