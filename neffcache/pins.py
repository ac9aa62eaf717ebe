"""Pins: named sets of artifacts that eviction never removes (a deployment's lock file), in the
database. `neffcache lock --pin NAME` and `neffcache pin add|rm|ls` reach these through the
service's /v1/pins routes; the GC (neffcache.gc) asks `pinned_clause` or `pinned_keys`, and takes
its victims with `lock_for_eviction`.

A pin has a name, an owner (the name of the token that made it), an optional note and an
optional expiry, and names artifacts by their whole keys. It protects them while it is live:
`expires_at` NULL or in the future. An expired pin protects nothing, and anyone who may write
may replace it; a live one only its owner or an admin may replace or remove.

The race with eviction: a pin may be added for an artifact that the GC is deleting at the same
moment. `put_pin` locks the artifact rows it names (FOR SHARE on Postgres) before writing its
entries, and refuses keys that have no row; `lock_for_eviction` locks the rows it may delete
(FOR UPDATE) and only then reads the pins, in a statement of its own. Whichever transaction
takes its lock first, the other sees its outcome: the pin is refused (the artifact is gone), or
the artifact is kept (the pin committed). On SQLite, BEGIN IMMEDIATE makes every transaction a
writer, so the two never overlap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from neffcache import tokens
from neffcache.db.models import Artifact, ArtifactFile, Pin, PinnedArtifact
from neffcache.errors import Forbidden, InvalidParameter, InvalidSpec, NotFound

# Letters, digits, '.', '_', '-', starting with a letter or digit, at most the column's 128: a
# name that is one path segment of /v1/pins/{name} as it is, and reads the same in a shell.
PIN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_PIN_NAME = re.compile(PIN_NAME_PATTERN)
# Entries a pin may hold: a deployment's lock is tens to thousands of artifacts; a pin of more
# is probably a mistake (a whole namespace), and one request writes them all in one transaction.
MAX_ENTRIES = 10_000
MAX_NOTE = 1024
# Keys per IN (...) list: under SQLite's bound-parameter limit, and a short statement each.
_CHUNK = 1000
_SHOWN = 5


def check_name(name: str) -> str:
    """`name` itself, or 400 invalid_parameter naming `name` (it is the path's parameter)."""
    if not _PIN_NAME.fullmatch(name):
        raise InvalidParameter(f"name: {name[:80]!r} is not a pin name (1 to 128 of letters, digits, '.', '_', "
                               "'-', starting with a letter or digit)", field="name")
    return name


def check_entry_count(count: int) -> None:
    """Returns if a pin may hold `count` artifacts; else 422 naming `keys`."""
    if count == 0:
        raise InvalidSpec("keys: give at least one artifact key to pin", field="keys")
    if count > MAX_ENTRIES:
        raise InvalidSpec(f"keys: a pin holds at most {MAX_ENTRIES} artifacts, {count} were given; "
                          "split them into several pins", field="keys")


def expiry(now: datetime, expires_in: str | None = None, expires_at: datetime | None = None) -> datetime | None:
    """When a pin made at `now` expires: `expires_in` from now (a duration such as 30d, as tokens
    take), or `expires_at` (an aware time in the future), or never (neither). 422 naming the
    field otherwise."""
    if expires_in is not None and expires_at is not None:
        raise InvalidSpec("expires_in: give expires_in or expires_at, not both", field="expires_in")
    if expires_in is not None:
        try:
            return now + tokens.parse_duration(expires_in)
        except InvalidParameter as exc:
            _, _, why = exc.detail.partition(": ")
            raise InvalidSpec(f"expires_in: {why}", field="expires_in") from None
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidSpec("expires_at: give a time zone, e.g. 2030-01-02T03:04:05Z", field="expires_at")
        try:
            expires_at = expires_at.astimezone(UTC)  # as it is stored
        except OverflowError:
            raise InvalidSpec(f"expires_at: {expires_at.isoformat()} is past the year 9999 in UTC",
                              field="expires_at") from None
        if expires_at <= now:
            raise InvalidSpec(f"expires_at: {expires_at.isoformat()} is not in the future", field="expires_at")
    return expires_at


def is_live(pin: Pin, now: datetime) -> bool:
    return pin.expires_at is None or pin.expires_at > now


def _live(now: datetime) -> ColumnElement[bool]:
    return or_(Pin.expires_at.is_(None), Pin.expires_at > now)


def pinned_clause(key_column: Any, now: datetime) -> ColumnElement[bool]:
    """A WHERE clause that holds for the rows whose `key_column` (e.g. Artifact.key) a live pin
    names: `EXISTS (a pinned_artifacts row of that key whose pin's expires_at is NULL or after
    now)`. `~pinned_clause(...)` keeps the unpinned ones.

    For choosing and counting (the LRU order, the pinned bytes). It is not enough to decide a
    deletion on: a pin committed after the statement began is not seen by it, even once the
    statement has waited for that pin's row lock (see lock_for_eviction)."""
    return exists(
        select(PinnedArtifact.artifact_key)
        .join(Pin, Pin.name == PinnedArtifact.pin_name)
        .where(PinnedArtifact.artifact_key == key_column, _live(now))
    )


def _chunks(keys: Iterable[str]) -> Iterator[list[str]]:
    ordered = sorted(set(keys))
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start:start + _CHUNK]


def pinned_keys(session: Session, keys: Iterable[str], now: datetime) -> set[str]:
    """Those of `keys` that a live pin names (expired pins protect nothing)."""
    found: set[str] = set()
    for chunk in _chunks(keys):
        found.update(session.scalars(
            select(PinnedArtifact.artifact_key).distinct()
            .join(Pin, Pin.name == PinnedArtifact.pin_name)
            .where(PinnedArtifact.artifact_key.in_(chunk), _live(now))
        ))
    return found


def lock_for_eviction(session: Session, keys: Iterable[str], now: datetime) -> list[str]:
    """The GC's side of the race with put_pin: those of `keys` whose artifact row exists and that
    no live pin names, their rows locked FOR UPDATE (on Postgres) until the session ends, in key
    order (put_pin locks in the same order: neither waits for the other in a cycle). Delete only
    these, in the same transaction.

    The pins are read after the lock is held, in a statement of its own: Postgres checks a
    locked row's WHERE again only when the row itself changed, and a pin changes no artifact row,
    so a single `SELECT ... WHERE NOT pinned FOR UPDATE` could return a row that a pin committed
    to while the SELECT waited for it. Each statement of a READ COMMITTED transaction (the
    engine's) sees what committed before it, so the second one sees that pin; and a pin that
    comes after waits for this transaction, then finds the artifact gone and is refused."""
    locked: list[str] = []
    for chunk in _chunks(keys):
        locked += session.scalars(
            select(Artifact.key).where(Artifact.key.in_(chunk)).order_by(Artifact.key).with_for_update()
        )
    pinned = pinned_keys(session, locked, now)
    return [key for key in locked if key not in pinned]


def remove_expired(session: Session, now: datetime) -> list[str]:
    """Delete the pins whose expiry has passed (their entries go with them); their names."""
    names = list(session.scalars(select(Pin.name).where(Pin.expires_at <= now).order_by(Pin.name)))
    if names:
        session.execute(delete(Pin).where(Pin.name.in_(names)))
    return names


def _lock_artifacts(session: Session, keys: Sequence[str]) -> dict[str, str]:
    """{key: namespace} of the artifacts among `keys`, each row locked FOR SHARE (on Postgres)
    until the session ends, so that no eviction deletes it meanwhile."""
    found: dict[str, str] = {}
    for chunk in _chunks(keys):
        rows = session.execute(
            select(Artifact.key, Artifact.namespace).where(Artifact.key.in_(chunk)).order_by(Artifact.key)
            .with_for_update(read=True)
        )
        found.update({key: namespace for key, namespace in rows})
    return found


def _named(keys: Sequence[str]) -> str:
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _check_owner(pin: Pin, caller: str, admin: bool, doing: str,
                 anyone_once_expired_at: datetime | None = None) -> None:
    """Returns if `caller` may do this to `pin`: it is its owner or an admin, or, given
    `anyone_once_expired_at` (now), the pin has expired by then; else 403."""
    if pin.owner == caller or admin:
        return
    if anyone_once_expired_at is not None and not is_live(pin, anyone_once_expired_at):
        return
    until = ""
    if anyone_once_expired_at is not None and pin.expires_at is not None:
        until = f" until it expires ({pin.expires_at.isoformat()})"
    raise Forbidden(f"pin {pin.name!r} belongs to {pin.owner!r}: only its owner or an admin token may {doing} it"
                    f"{until}", pin=pin.name, owner=pin.owner)


def _pin_row(session: Session, name: str, caller: str, admin: bool, now: datetime) -> tuple[Pin, bool]:
    """(the pin named `name`, locked, whether it is new): an existing one if `caller` may replace
    it, else a new row, flushed. Two requests creating one name at once: the second waits for the
    first's row (the primary key's index) and then replaces it, as if it had come after."""
    while True:
        pin = session.get(Pin, name, with_for_update=True, populate_existing=True)
        if pin is not None:
            _check_owner(pin, caller, admin, "replace", anyone_once_expired_at=now)
            return pin, False
        try:
            with session.begin_nested():
                pin = Pin(name=name, owner=caller, created_at=now)
                session.add(pin)
        except IntegrityError:
            continue  # made by another request meanwhile: read it, locked
        return pin, True


def put_pin(session: Session, name: str, keys: Iterable[str], caller: str, *, now: datetime, admin: bool = False,
            expires_at: datetime | None = None, note: str | None = None,
            check_namespace: Callable[[str], None] = lambda namespace: None) -> Pin:
    """Create the pin `name`, or replace it (its entries, expiry and note; created_at and owner
    become this request's), naming exactly the artifacts of `keys` (whole keys). `caller` is the
    token's name, the owner; `admin`: the token is an admin one. `check_namespace` is called with
    each artifact's namespace and raises to refuse it (the route: 403 naming it).

    Refused: a bad name (400), no keys or too many (422), a key without an artifact (404 naming
    the missing keys), another's live pin (403). Nothing is written then (the session rolls
    back). The artifact rows stay locked until the session commits: see lock_for_eviction."""
    check_name(name)
    wanted = sorted(set(keys))
    check_entry_count(len(wanted))
    if note is not None and len(note) > MAX_NOTE:
        raise InvalidSpec(f"note: at most {MAX_NOTE} characters ({len(note)} given)", field="note")
    pin, new = _pin_row(session, name, caller, admin, now)
    namespaces = _lock_artifacts(session, wanted)
    missing = [key for key in wanted if key not in namespaces]
    if missing:
        raise NotFound(f"keys: no artifact {_named(missing)} (nothing was pinned)", keys=missing[:_SHOWN],
                       missing=len(missing))
    for namespace in sorted(set(namespaces.values())):
        check_namespace(namespace)
    if not new:
        session.execute(delete(PinnedArtifact).where(PinnedArtifact.pin_name == name))
        pin.owner, pin.created_at = caller, now
    pin.expires_at, pin.note = expires_at, note
    session.flush()
    session.execute(insert(PinnedArtifact), [{"pin_name": name, "artifact_key": key} for key in wanted])
    session.expire(pin, ["entries"])
    return pin


def get_pin(session: Session, name: str) -> Pin:
    pin = session.get(Pin, check_name(name))
    if pin is None:
        raise NotFound(f"no pin named {name!r}", pin=name)
    return pin


def list_pins(session: Session) -> list[Pin]:
    return list(session.scalars(select(Pin).order_by(Pin.name)))


def remove_pin(session: Session, name: str, caller: str, *, admin: bool = False) -> Pin:
    """Remove the pin `name` (its entries go with it): its owner or an admin may (403 otherwise).
    The removed pin, its entries loaded."""
    pin = session.get(Pin, check_name(name), with_for_update=True)
    if pin is None:
        raise NotFound(f"no pin named {name!r}", pin=name)
    _check_owner(pin, caller, admin, "remove")
    list(pin.entries)  # loaded before they go: the answer shows them
    # One statement; the database's ON DELETE CASCADE takes the entries (the ORM would delete
    # each loaded entry by itself).
    session.execute(delete(Pin).where(Pin.name == pin.name))
    session.expunge(pin)
    return pin


def artifact_sizes(session: Session, keys: Iterable[str]) -> dict[str, tuple[str, int]]:
    """{key: (namespace, bytes of its files)} of the artifacts among `keys` that exist."""
    found: dict[str, tuple[str, int]] = {}
    for chunk in _chunks(keys):
        rows = session.execute(
            select(Artifact.key, Artifact.namespace, func.coalesce(func.sum(ArtifactFile.size), 0))
            .outerjoin(ArtifactFile, ArtifactFile.artifact_key == Artifact.key)
            .where(Artifact.key.in_(chunk)).group_by(Artifact.key, Artifact.namespace)
        )
        found.update({key: (namespace, int(size)) for key, namespace, size in rows})
    return found
