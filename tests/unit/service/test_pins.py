"""Pins (neffcache/pins.py and the /v1/pins routes) in process, on the session's database (Postgres
where NEFFCACHE_TEST_DATABASE_URL names one): who may pin, replace and remove what, expiry as the
GC reads it, and the race of a pin with an eviction of the same artifact."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, text, update

from neffcache import pins, tokens
from neffcache.db.models import ApiToken, Artifact, ArtifactFile, Pin, PinnedArtifact, utcnow
from neffcache.db.session import Database
from neffcache.errors import NotFound
from neffcache.service.app import create_app
from tests.support.api import SAMPLE_MANIFEST, error_body
from tests.support.in_process import service_settings

TEAM, OTHER_TEAM = "pins-team", "pins-other"
FILE_BYTES = (1000, 24)  # each artifact's two files


@dataclass
class Pins:
    client: TestClient
    db: Database
    run: str
    tokens: dict[str, str]  # who -> token; the token's name is f"{run}-{who}"
    keys: list[str]  # artifacts in TEAM
    foreign: str  # an artifact in OTHER_TEAM

    def name(self, who: str) -> str:
        return f"{self.run}-{who}"

    def call(self, method: str, path: str, who: str = "owner", **kwargs: Any) -> Any:
        return self.client.request(method, path, headers={"Authorization": f"Bearer {self.tokens[who]}"}, **kwargs)

    def put(self, pin: str, who: str = "owner", **body: Any) -> Any:
        return self.call("PUT", f"/v1/pins/{pin}", who, json=body)

    def add_artifact(self, namespace: str = TEAM) -> str:
        key = uuid.uuid4().hex * 2
        manifest = {**SAMPLE_MANIFEST, "namespace": namespace}
        files = [ArtifactFile(name=f"f{i}", digest="sha256:" + uuid.uuid4().hex * 2, size=size, neff=None)
                 for i, size in enumerate(FILE_BYTES)]
        with self.db.session() as session:
            session.add(Artifact.from_manifest(key, manifest, files, compile_seconds=1.0, job_id=None,
                                               annotations=None))
        return key

    def exists(self, key: str) -> bool:
        with self.db.session() as session:
            return session.get(Artifact, key) is not None

    def pin_row(self, name: str) -> tuple[str | None, list[str]] | None:
        """(owner, keys) of the pin as stored, or None."""
        with self.db.session() as session:
            pin = session.get(Pin, name)
            return None if pin is None else (pin.owner, [e.artifact_key for e in pin.entries])

    def expire(self, name: str) -> None:
        with self.db.session() as session:
            session.execute(update(Pin).where(Pin.name == name).values(expires_at=utcnow() - timedelta(seconds=1)))


# Tokens by who holds them: (scope, namespaces; None is every namespace).
HOLDERS = {"owner": ("write", [TEAM]), "colleague": ("write", [TEAM]), "reader": ("read", [TEAM]),
           "outsider": ("write", [OTHER_TEAM]), "admin": ("admin", None)}


@pytest.fixture(scope="module")
def service(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pins]:
    run = "pins-" + uuid.uuid4().hex[:8]
    app = create_app(service_settings(tmp_path_factory.mktemp("pins"), database_url=database_url, auth_required=True))
    db: Database = app.state.ctx.db
    with db.session() as session:
        made = {who: tokens.create_token(session, f"{run}-{who}", scope, namespaces=namespaces)
                for who, (scope, namespaces) in HOLDERS.items()}
    with TestClient(app) as client:
        state = Pins(client, db, run, made, [], "")
        state.keys = [state.add_artifact() for _ in range(3)]
        state.foreign = state.add_artifact(OTHER_TEAM)
        try:
            yield state
        finally:
            with db.session() as session:
                session.execute(delete(Pin).where(Pin.name.startswith(run)))
                session.execute(delete(ApiToken).where(ApiToken.name.startswith(run)))
                session.execute(delete(Artifact).where(Artifact.namespace.in_([TEAM, OTHER_TEAM])))


def pin_name(service: Pins) -> str:
    return f"{service.run}-{uuid.uuid4().hex[:8]}"


def test_a_pin_names_its_artifacts_with_their_bytes_and_shows_its_owner(service: Pins) -> None:
    name = pin_name(service)
    whole, prefixed = service.keys[0], service.keys[1]
    r = service.put(name, keys=[whole, prefixed[:10].upper(), whole], expires_in="30d", note="deploy 42")
    assert r.status_code == 200, r.text
    made = r.json()
    assert (made["name"], made["owner"], made["note"], made["expired"]) == (name, service.name("owner"), "deploy 42",
                                                                           False)
    assert made["expires_at"] > made["created_at"]
    assert {e["key"] for e in made["entries"]} == {whole, prefixed}  # the prefix resolved, the repeat once
    assert all(e["exists"] and e["bytes"] == sum(FILE_BYTES) and e["namespace"] == TEAM for e in made["entries"])
    assert (made["artifacts"], made["missing"], made["bytes"], made["hidden"]) == (2, 0, 2 * sum(FILE_BYTES), 0)

    shown = service.call("GET", f"/v1/pins/{name}", "reader")
    assert shown.status_code == 200 and shown.json() == made
    listed = {p["name"]: p for p in service.call("GET", "/v1/pins", "reader").json()["pins"]}
    assert listed[name] == {k: v for k, v in made.items() if k != "entries"}
    # A token of another namespace sees the pin, not which artifacts of TEAM it names.
    outside = service.call("GET", f"/v1/pins/{name}", "outsider").json()
    assert (outside["entries"], outside["artifacts"], outside["bytes"], outside["hidden"]) == ([], 0, 0, 2)


def _bad_expiry(**body: Any) -> Callable[[Pins], tuple[str, dict[str, Any]]]:
    return lambda s: (pin_name(s), {"keys": [s.keys[0]], **body})


def _keys(make: Callable[[Pins], list[str]]) -> Callable[[Pins], tuple[str, dict[str, Any]]]:
    return lambda s: (pin_name(s), {"keys": make(s)})


# (case, who, (pin name, body) for PUT, status, code, what the detail names)
PUT_REFUSALS = [
    ("a name with a space", "owner", lambda s: ("no good", {"keys": [s.keys[0]]}), 400, "invalid_parameter", "name:"),
    ("a name starting with '.'", "owner", lambda s: (".hidden", {"keys": [s.keys[0]]}), 400, "invalid_parameter",
     "name:"),
    ("a name too long", "owner", lambda s: ("p" * 129, {"keys": [s.keys[0]]}), 400, "invalid_parameter", "name:"),
    ("an unknown key", "owner", _keys(lambda s: [s.keys[0], "e" * 64]), 404, "not_found", "e" * 64),
    ("an unknown prefix", "owner", _keys(lambda s: [s.keys[0], "eeeeeeee0"]), 404, "not_found", "keys[1]"),
    ("not a key", "owner", _keys(lambda s: ["xyz"]), 422, "invalid_spec", "keys[0]"),
    ("a key in another namespace", "owner", _keys(lambda s: [s.keys[0], s.foreign]), 403, "forbidden",
     f"namespace {OTHER_TEAM!r}"),
    ("a read token", "reader", _keys(lambda s: [s.keys[0]]), 403, "forbidden", "needs 'write'"),
    ("no keys", "owner", _keys(lambda s: []), 422, "invalid_spec", "keys: give at least one"),
    ("too many keys", "owner", _keys(lambda s: [f"{n:064x}" for n in range(pins.MAX_ENTRIES + 1)]), 422,
     "invalid_spec", f"at most {pins.MAX_ENTRIES}"),
    ("a duration that is not one", "owner", _bad_expiry(expires_in="30x"), 422, "invalid_spec", "expires_in:"),
    ("a zero duration", "owner", _bad_expiry(expires_in="0d"), 422, "invalid_spec", "expires_in:"),
    ("an expiry in the past", "owner", _bad_expiry(expires_at="2020-01-01T00:00:00Z"), 422, "invalid_spec",
     "expires_at: 2020-01-01T00:00:00+00:00 is not in the future"),
    ("an expiry without a time zone", "owner", _bad_expiry(expires_at="2999-01-01T00:00:00"), 422, "invalid_spec",
     "expires_at"),
    ("an expiry past the year 9999 in UTC", "owner", _bad_expiry(expires_at="9999-12-31T23:00:00-12:00"), 422,
     "invalid_spec", "past the year 9999"),
    ("both expiries", "owner", _bad_expiry(expires_in="1d", expires_at="2999-01-01T00:00:00Z"), 422, "invalid_spec",
     "not both"),
    ("a note too long", "owner", _bad_expiry(note="n" * (pins.MAX_NOTE + 1)), 422, "invalid_spec", "note"),
]


@pytest.mark.parametrize(("who", "request_of", "status", "code", "named"), [case[1:] for case in PUT_REFUSALS],
                         ids=[case[0] for case in PUT_REFUSALS])
def test_a_pin_is_refused_naming_what_is_wrong_and_nothing_is_pinned(
        service: Pins, who: str, request_of: Callable[[Pins], tuple[str, dict[str, Any]]], status: int, code: str,
        named: str) -> None:
    name, body = request_of(service)
    error_body(service.put(name, who, **body), status, code, named)
    with service.db.session() as session:
        assert session.scalars(select(PinnedArtifact).where(PinnedArtifact.pin_name == name)).all() == []
    assert service.pin_row(name) is None


# (case, who removes or replaces it, status, code, what the detail names; None: allowed)
CHANGES = [
    ("its owner removes it", "owner", "DELETE", None),
    ("an admin removes it", "admin", "DELETE", None),
    ("another write token removes it", "colleague", "DELETE", (403, "forbidden", "may remove it")),
    ("a read token removes it", "reader", "DELETE", (403, "forbidden", "needs 'write'")),
    ("its owner replaces it", "owner", "PUT", None),
    ("an admin replaces it", "admin", "PUT", None),
    ("another write token replaces it", "colleague", "PUT", (403, "forbidden", "may replace it")),
]


@pytest.mark.parametrize(("who", "method", "refused"), [case[1:] for case in CHANGES], ids=[c[0] for c in CHANGES])
def test_only_its_owner_or_an_admin_changes_a_live_pin(service: Pins, who: str, method: str,
                                                       refused: tuple[int, str, str] | None) -> None:
    name = pin_name(service)
    assert service.put(name, keys=service.keys[:2]).status_code == 200
    if method == "DELETE":
        r = service.call("DELETE", f"/v1/pins/{name}", who)
    else:
        r = service.put(name, who, keys=service.keys[2:])
    if refused is not None:
        error_body(r, *refused[:2], refused[2], *(() if who == "reader" else (service.name("owner"),)))
        assert service.pin_row(name) == (service.name("owner"), sorted(service.keys[:2]))
        return
    assert r.status_code == 200, r.text
    if method == "DELETE":
        assert r.json()["artifacts"] == 2  # the pin as it was
        assert service.pin_row(name) is None
        error_body(service.call("DELETE", f"/v1/pins/{name}", who), 404, "not_found", name)
        error_body(service.call("GET", f"/v1/pins/{name}"), 404, "not_found", name)
        assert all(service.exists(key) for key in service.keys[:2])  # the artifacts stay
    else:
        assert service.pin_row(name) == (service.name(who), service.keys[2:])


def test_a_replace_takes_the_new_entries_expiry_and_note(service: Pins) -> None:
    name = pin_name(service)
    first = service.put(name, keys=service.keys[:2], expires_in="1h", note="old").json()
    again = service.put(name, keys=[service.keys[2]])
    assert again.status_code == 200, again.text
    body = again.json()
    assert [e["key"] for e in body["entries"]] == [service.keys[2]]
    assert (body["expires_at"], body["note"]) == (None, None)
    assert body["created_at"] >= first["created_at"]
    assert service.pin_row(name) == (service.name("owner"), [service.keys[2]])


def test_an_expired_pin_protects_nothing_and_anyone_who_may_write_replaces_it(service: Pins) -> None:
    name, key = pin_name(service), service.add_artifact()  # an artifact no other test pins
    assert service.put(name, keys=[key], expires_in="1h").status_code == 200
    now = utcnow()
    with service.db.session() as session:
        assert pins.pinned_keys(session, [key], now) == {key}
        assert pins.pinned_keys(session, [key], now + timedelta(hours=2)) == set()
    service.expire(name)
    with service.db.session() as session:
        assert pins.pinned_keys(session, [key], utcnow()) == set()
        unpinned = select(Artifact.key).where(Artifact.key == key, ~pins.pinned_clause(Artifact.key, utcnow()))
        assert session.scalars(unpinned).all() == [key]
    shown = service.call("GET", f"/v1/pins/{name}").json()
    assert shown["expired"] is True
    r = service.put(name, "colleague", keys=[key])
    assert r.status_code == 200, r.text
    assert (r.json()["owner"], r.json()["expired"]) == (service.name("colleague"), False)
    with service.db.session() as session:
        assert pins.pinned_keys(session, [key], utcnow()) == {key}


def test_pinned_keys_and_the_clause_agree_and_honour_expiry(service: Pins) -> None:
    never, later, past = (pin_name(service) for _ in range(3))
    keys = [service.add_artifact() for _ in range(3)]  # artifacts no other test pins
    a, b, c = keys
    assert service.put(never, keys=[a]).status_code == 200
    assert service.put(later, keys=[a, b], expires_in="1d").status_code == 200
    assert service.put(past, keys=[c], expires_in="1d").status_code == 200
    service.expire(past)
    for now, expected in ((utcnow(), {a, b}), (utcnow() + timedelta(days=2), {a})):
        with service.db.session() as session:
            assert pins.pinned_keys(session, keys, now) == expected
            clause = pins.pinned_clause(Artifact.key, now)
            assert set(session.scalars(select(Artifact.key).where(Artifact.key.in_(keys), clause))) == expected
            assert pins.lock_for_eviction(session, [*keys, "e" * 64], now) == sorted(set(keys) - expected)
    with service.db.session() as session:
        assert past in pins.remove_expired(session, utcnow())
    assert service.pin_row(past) is None and service.pin_row(later) is not None
    for name in (never, later):
        assert service.call("DELETE", f"/v1/pins/{name}").status_code == 200


def test_a_pin_of_an_artifact_evicted_since_shows_it_missing(service: Pins) -> None:
    name, key = pin_name(service), service.add_artifact()
    assert service.put(name, keys=[key, service.keys[0]]).status_code == 200
    with service.db.session() as session:
        session.execute(delete(Artifact).where(Artifact.key == key))
    shown = service.call("GET", f"/v1/pins/{name}").json()
    assert {e["key"]: (e["exists"], e["bytes"]) for e in shown["entries"]} == {
        key: (False, None), service.keys[0]: (True, sum(FILE_BYTES))}
    assert (shown["artifacts"], shown["missing"], shown["bytes"]) == (2, 1, sum(FILE_BYTES))
    # Whose namespace the gone artifact was in cannot be told: another token of TEAM is not shown it.
    assert service.call("GET", f"/v1/pins/{name}", "colleague").json()["hidden"] == 1


# --- the race with eviction ------------------------------------------------------------------
def _wait_until_a_session_waits_for_a_lock(db: Database) -> None:
    """Returns once another connection of this database waits for a row lock (on Postgres, where
    pg_stat_activity tells); on SQLite the second transaction waits in BEGIN IMMEDIATE, which
    nothing shows, so this returns after a moment (either way the outcome is checked)."""
    if db.engine.dialect.name != "postgresql":
        time.sleep(0.3)
        return
    deadline = time.monotonic() + 30
    with db.engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND wait_event_type = 'Lock'")).scalar()
            conn.commit()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("no session ever waited for the row lock")


def _in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as exc:  # noqa: BLE001 - the test reads what it ended with
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_a_pin_added_while_its_artifact_is_evicted_is_refused(service: Pins) -> None:
    name, key = pin_name(service), service.add_artifact()
    db = service.db

    def add_pin() -> Pin:
        with db.session() as session:
            return pins.put_pin(session, name, [key], service.name("owner"), now=utcnow())

    with db.session() as gc:
        assert pins.lock_for_eviction(gc, [key], utcnow()) == [key]  # the row is the GC's now
        thread, outcome = _in_thread(add_pin)
        _wait_until_a_session_waits_for_a_lock(db)
        gc.execute(delete(Artifact).where(Artifact.key == key))
    thread.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], NotFound), outcome
    assert key in outcome[0].detail
    assert not service.exists(key) and service.pin_row(name) is None


def test_an_eviction_while_a_pin_is_added_keeps_the_artifact(service: Pins) -> None:
    name, key = pin_name(service), service.add_artifact()
    db = service.db

    def evict() -> list[str]:
        with db.session() as gc:
            victims = pins.lock_for_eviction(gc, [key], utcnow())
            gc.execute(delete(Artifact).where(Artifact.key.in_(victims)))
            return victims

    with db.session() as session:
        pins.put_pin(session, name, [key], service.name("owner"), now=utcnow())
        thread, outcome = _in_thread(evict)
        _wait_until_a_session_waits_for_a_lock(db)
    thread.join(60)
    assert outcome == [[]]  # nothing to evict: the pin committed while the GC waited for the row
    assert service.exists(key) and service.pin_row(name) == (service.name("owner"), [key])


def test_two_requests_making_one_pin_at_once_both_succeed_and_the_last_one_holds(service: Pins) -> None:
    name = pin_name(service)
    start = threading.Barrier(2)

    def put(keys: list[str]) -> int:
        start.wait()
        return int(service.put(name, keys=keys).status_code)

    threads = [_in_thread(lambda keys=keys: put(keys)) for keys in ([service.keys[0]], [service.keys[1]])]
    for thread, _ in threads:
        thread.join(60)
    assert [outcome for _, outcome in threads] == [[200], [200]]
    stored = service.pin_row(name)
    assert stored is not None and stored[1] in ([service.keys[0]], [service.keys[1]])


def test_the_pin_name_rule_is_what_the_routes_document(service: Pins) -> None:
    document = service.client.get("/openapi.json").json()
    for method in ("put", "get", "delete"):
        parameter = document["paths"]["/v1/pins/{name}"][method]["parameters"][0]
        assert parameter["schema"]["pattern"] == pins.PIN_NAME_PATTERN
