"""Bearer tokens: creation, hashing, scopes, namespaces, expiry and use. Shared by the service
(checking) and the admin command (creating and revoking), which both talk to the database.

A token holds one scope and the namespaces it may act in. Scopes are ordered, each including
the ones before it: `read` (look up, download, list), `write` (upload models, compile on the
farm, cancel), `publish` (also publish bytes built elsewhere: `POST /v1/artifacts`, `neffcache
push`), `admin` (also tokens; always every namespace). Publishing is above compiling because
a pushed artifact is bytes the farm never built: whoever may publish may poison a key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from neffcache import invalidation
from neffcache.db.models import ApiToken, utcnow
from neffcache.errors import InvalidParameter, NotFound
from neffcache.spec import NAMESPACE_PATTERN

SCOPES = ("read", "write", "publish", "admin")  # each includes the ones before it
# The namespaces of a token that may act in every namespace (admin tokens, the bootstrap token,
# and tokens made with --all-namespaces); not a namespace name (NAMESPACE_PATTERN has no '*').
ALL_NAMESPACES = "*"
TOKEN_PREFIX = "nfc_"
# The caller name of NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN (not a database token: no token may take it).
BOOTSTRAP_ADMIN = "bootstrap-admin"
# last_used_at is written at most this often per token, not on every request.
LAST_USED_RESOLUTION = timedelta(minutes=1)
_DURATION = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """'90m', '12h', '30d', '2w' (or combined, '1d12h') -> timedelta; InvalidParameter otherwise."""
    text = text.strip().lower()
    parts = _DURATION.findall(text)
    if not text or "".join(n + u for n, u in parts) != text or not any(int(n) for n, _ in parts):
        raise InvalidParameter(f"expires-in: {text!r} is not a duration such as 90m, 12h, 30d or 2w")
    try:
        total = sum((timedelta(**{_UNITS[unit]: int(n)}) for n, unit in parts), timedelta())
        utcnow() + total  # a date past year 9999 cannot be stored
    except OverflowError:
        raise InvalidParameter(f"expires-in: {text!r} is too long") from None
    return total


def check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise InvalidParameter(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")


def scope_allows(held: str, needed: str) -> bool:
    return SCOPES.index(held) >= SCOPES.index(needed)


def namespace_allows(held: Iterable[str], namespace: str) -> bool:
    held = tuple(held)
    return ALL_NAMESPACES in held or namespace in held


def checked_namespaces(scope: str, namespaces: Sequence[str] | None) -> list[str]:
    """The namespaces a new token is stored with: None means every namespace; admin tokens have
    every namespace; each name is checked against the spec's namespace form."""
    if namespaces is None:
        return [ALL_NAMESPACES]
    if scope == "admin":
        raise InvalidParameter("namespace: an admin token acts in every namespace; give no --namespace")
    names = sorted(set(namespaces))
    if not names:
        raise InvalidParameter("namespace: give at least one namespace (or every namespace)")
    for name in names:
        if name == ALL_NAMESPACES or not re.fullmatch(NAMESPACE_PATTERN, name):
            raise InvalidParameter(f"namespace: {name[:80]!r} is not a namespace (lowercase letters, digits, '.', "
                                   "'_', '-'; up to 64, starting with a letter or digit)")
    return names


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain sha256 cannot be brute-forced back to them.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, scope: str, expires_in: timedelta | None = None,
                 namespaces: Sequence[str] | None = None) -> str:
    """A new token (returned, stored only as its hash); `expires_in`: refused that long from now;
    `namespaces`: where it may act (None: every namespace)."""
    check_scope(scope)
    allowed = checked_namespaces(scope, namespaces)
    if name == BOOTSTRAP_ADMIN:
        raise InvalidParameter(f"name: {BOOTSTRAP_ADMIN!r} names NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN; pick another")
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidParameter("expires-in: must be positive")
    existing = session.get(ApiToken, name)
    if existing is not None and existing.revoked_at is None:
        raise InvalidParameter(f"name: a token named {name!r} exists; revoke it first")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    if existing is not None:
        # The revoked token's row stays, under a name of its own: it is the audit trail, and a
        # revoked admin token's row is the record that ends the bootstrap token for good.
        assert existing.revoked_at is not None
        existing.name = f"{name[:96]}@revoked-{existing.revoked_at:%Y%m%dT%H%M%S.%f}"
        session.flush()
    now = utcnow()
    session.add(ApiToken(name=name, token_sha256=hash_token(token), scope=scope, namespaces=allowed, created_at=now,
                         expires_at=now + expires_in if expires_in is not None else None))
    return token


def revoke_token(session: Session, name: str, announce: invalidation.Announce) -> None:
    """Revoke the token named `name`. Once the session commits, every API process is told to drop
    the grant it keeps in memory, through `announce` (neffcache.invalidation)."""
    row = session.get(ApiToken, name)
    if row is None and name == BOOTSTRAP_ADMIN:
        raise NotFound(f"{BOOTSTRAP_ADMIN!r} is NEFFCACHE_BOOTSTRAP_ADMIN_TOKEN, not a database token: "
                       "it is refused once an admin token exists (create one with --scope admin)")
    if row is None or row.revoked_at is not None:
        raise NotFound(f"no active token named {name!r}")
    row.revoked_at = utcnow()
    invalidation.after_commit(session, invalidation.Invalidation.grant(row.token_sha256),
                              announce)


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def find_token(session: Session, token: str) -> ApiToken | None:
    """The token's row unless it is unknown or revoked (an expired one is returned: see `expired`)."""
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token)))
    return row if row is not None and row.revoked_at is None else None


def expired(row: ApiToken, now: datetime | None = None) -> bool:
    return row.expires_at is not None and row.expires_at <= (now or utcnow())


def record_use(row: ApiToken, now: datetime | None = None) -> bool:
    """Set the row's last_used_at, unless it was set less than LAST_USED_RESOLUTION ago (by this
    process or another replica: the row says), so a busy token is not written on every request.
    Returns whether it was set (the caller's session commits it)."""
    now = now or utcnow()
    if row.last_used_at is not None and now - row.last_used_at < LAST_USED_RESOLUTION:
        return False
    row.last_used_at = now
    return True


def admin_tokens_exist(session: Session) -> bool:
    """Whether any admin token was made (revoked or expired ones count): from then on the
    bootstrap admin token is refused."""
    return session.scalar(select(ApiToken.name).where(ApiToken.scope == "admin").limit(1)) is not None


def matches(token: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(token.encode(), expected.encode())
