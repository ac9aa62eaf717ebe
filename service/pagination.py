"""Keyset pagination for the list endpoints: newest first, an opaque cursor to go on."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from neffcache.errors import InvalidParameter

MAX_LIMIT = 500
# The ids paged here: job UUIDs and artifact keys.
_CURSOR_ID = re.compile(r"[0-9a-f-]{1,64}")


def encode_cursor(created_at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{ident}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position `cursor` names, or 400 invalid_parameter. Checked by its round trip: only a
    string encode_cursor could have written is taken (a UTC time, an id of the form paged here,
    and the same string again when encoded), so nothing else reaches the database."""
    refused = InvalidParameter(f"cursor: {cursor[:40]!r} is not a cursor this service issued")
    try:
        created_text, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        created = datetime.fromisoformat(created_text)
    except (binascii.Error, ValueError, UnicodeError):
        raise refused from None
    if (created.utcoffset() != timedelta(0) or _CURSOR_ID.fullmatch(ident) is None
            or encode_cursor(created, ident) != cursor):
        raise refused
    return created, ident


def fetch_page(session: Session, query: Select[Any], created_col: Any, id_col: Any, limit: int,
               cursor: str | None) -> tuple[Sequence[Any], str | None]:
    """One page of `query`, newest first, starting after `cursor`; and the cursor for the next
    page (None on the last). One extra row is fetched to know whether more follow."""
    if cursor:
        created, ident = decode_cursor(cursor)
        query = query.where(or_(created_col < created, and_(created_col == created, id_col < ident)))
    rows = session.scalars(query.order_by(created_col.desc(), id_col.desc()).limit(limit + 1)).all()
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(getattr(last, created_col.key), getattr(last, id_col.key))
