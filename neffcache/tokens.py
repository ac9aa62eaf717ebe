"""Bearer tokens: creation, hashing, scopes. Shared by the service (checking) and the admin
command (creating and revoking), which both talk to the database."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from neffcache.db.models import ApiToken, utcnow
from neffcache.errors import InvalidParameter, NotFound

SCOPES = ("read", "write", "admin")  # each includes the ones before it
TOKEN_PREFIX = "nfc_"


def scope_allows(held: str, needed: str) -> bool:
    return SCOPES.index(held) >= SCOPES.index(needed)


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a plain sha256 cannot be brute-forced back to them.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, scope: str) -> str:
    if scope not in SCOPES:
        raise InvalidParameter(f"scope: {scope!r} is not one of {', '.join(SCOPES)}")
    existing = session.get(ApiToken, name)
    if existing is not None and existing.revoked_at is None:
        raise InvalidParameter(f"name: a token named {name!r} exists; revoke it first")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    if existing is not None:
        session.delete(existing)
        session.flush()
    session.add(ApiToken(name=name, token_sha256=hash_token(token), scope=scope, created_at=utcnow()))
    return token


def revoke_token(session: Session, name: str) -> None:
    row = session.get(ApiToken, name)
    if row is None or row.revoked_at is not None:
        raise NotFound(f"no active token named {name!r}")
    row.revoked_at = utcnow()


def list_tokens(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)))


def find_token(session: Session, token: str) -> ApiToken | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_sha256 == hash_token(token)))
    return row if row is not None and row.revoked_at is None else None


def matches(token: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(token.encode(), expected.encode())
