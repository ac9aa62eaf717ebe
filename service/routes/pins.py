"""Pins: named sets of artifacts the GC never evicts (`neffcache pin`, `neffcache lock --pin`).
The rules are neffcache.pins'; these routes name the artifacts (whole keys or unique prefixes),
check the token's namespaces, and show pins."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy.orm import Session

from neffcache import pins
from neffcache.db.models import Pin, utcnow
from neffcache.errors import Forbidden, InvalidSpec, NotFound
from neffcache.service.auth import READ, WRITE, Grant, grant
from neffcache.service.errors import error_responses
from neffcache.service.resolve import KEY_LENGTH, KEY_PREFIX_PATTERN, PREFIX_ERRORS, resolve_key
from neffcache.service.routes.deps import context
from neffcache.service.views import pin_view
from neffcache.spec import Text

router = APIRouter(prefix="/v1/pins", tags=["pins"])
NameInPath = Annotated[str, Path(description="the pin's name: 1 to 128 of letters, digits, '.', '_', '-', starting "
                                             "with a letter or digit",
                                 json_schema_extra={"pattern": pins.PIN_NAME_PATTERN})]
KeyOrPrefix = Annotated[str, StringConstraints(pattern=KEY_PREFIX_PATTERN)]


class PinRequest(BaseModel):
    """The artifacts a pin names, and until when."""

    model_config = ConfigDict(extra="forbid")

    keys: list[KeyOrPrefix] = Field(description=f"artifact keys, or unique prefixes of them; at most "
                                                f"{pins.MAX_ENTRIES}")
    expires_in: Text | None = Field(None, description="expires this long from now: 90m, 12h, 30d, 2w")
    expires_at: AwareDatetime | None = Field(None, description="expires at this time (not with expires_in)")
    note: Text | None = Field(None, max_length=pins.MAX_NOTE, description="for people: what it is for")


def _whole_keys(session: Session, given: list[str]) -> list[str]:
    """The whole keys `given` names: whole keys as they are (put_pin refuses those with no
    artifact, all of them named at once), prefixes resolved here, one by one."""
    keys = []
    for index, value in enumerate(given):
        value = value.lower()
        keys.append(value if len(value) == KEY_LENGTH else resolve_key(session, value, f"keys[{index}]"))
    return keys


def _shown(found: Grant, pin: Pin) -> Any:
    """Which entries of `pin` the token sees: those in its namespaces; one whose artifact is gone
    (no namespace to tell) only its owner and every-namespace tokens."""
    def shown(namespace: str | None) -> bool:
        if namespace is None:
            return found.every_namespace or pin.owner == found.caller
        return found.allows(namespace)

    return shown


def _view(session: Session, found: Grant, pin: Pin, with_entries: bool = True) -> dict[str, Any]:
    sizes = pins.artifact_sizes(session, (e.artifact_key for e in pin.entries))
    return pin_view(pin, sizes, not pins.is_live(pin, utcnow()), _shown(found, pin), with_entries)


@router.put("/{name}", dependencies=[WRITE], responses=error_responses(*PREFIX_ERRORS, Forbidden, InvalidSpec))
def put_pin(name: NameInPath, body: PinRequest, request: Request) -> dict[str, Any]:
    """Pin artifacts under `name`, replacing the pin of that name if there is one (the token's own,
    or any once expired; an admin token may replace any). Every artifact must exist (404 naming
    those that do not: nothing is pinned) and be in the token's namespaces (403 naming the
    namespace). The pin, as GET shows it."""
    found = grant(request)
    pins.check_name(name)
    pins.check_entry_count(len(set(body.keys)))
    now = utcnow()
    expires_at = pins.expiry(now, body.expires_in, body.expires_at)
    with context(request).db.session() as session:
        keys = _whole_keys(session, body.keys)
        pin = pins.put_pin(session, name, keys, found.caller, now=now, admin=found.scope == "admin",
                           expires_at=expires_at, note=body.note, check_namespace=found.check)
        return _view(session, found, pin)


@router.get("", dependencies=[READ])
def list_pins(request: Request) -> dict[str, Any]:
    """Every pin, by name: owner, note, created, expires, whether it has expired, and how many
    artifacts it names, how many of those no longer exist, and their bytes (the entries in the
    token's namespaces; `hidden` counts the others)."""
    found = grant(request)
    with context(request).db.session() as session:
        return {"pins": [_view(session, found, pin, with_entries=False) for pin in pins.list_pins(session)]}


@router.get("/{name}", dependencies=[READ], responses=error_responses(NotFound))
def get_pin(name: NameInPath, request: Request) -> dict[str, Any]:
    """One pin, with its entries: each artifact's key, namespace, bytes and whether it still exists."""
    with context(request).db.session() as session:
        return _view(session, grant(request), pins.get_pin(session, name))


@router.delete("/{name}", dependencies=[WRITE], responses=error_responses(NotFound, Forbidden))
def remove_pin(name: NameInPath, request: Request) -> dict[str, Any]:
    """Remove a pin: its owner may, and an admin token (403 for another's). The artifacts stay
    until eviction takes them. The removed pin."""
    found = grant(request)
    with context(request).db.session() as session:
        pin = pins.remove_pin(session, name, found.caller, admin=found.scope == "admin")
        return _view(session, found, pin)
