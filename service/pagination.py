"""Keyset pagination for the list endpoints: newest first, an opaque cursor to go on."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Sequence, TypeVar

from sqlalchemy import Select, and_, or_

from neffcache.errors import InvalidParameter

T = TypeVar("T")
MAX_LIMIT = 500


def encode_cursor(created_at: datetime, ident: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{ident}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, ident = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), ident
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidParameter(f"cursor: {cursor[:40]!r} is not a cursor this service issued") from None


def page(query: Select[Any], created_col: Any, id_col: Any, limit: int, cursor: str | None) -> Select[Any]:
    """Order newest first and start after the cursor; fetch one extra row to know if more follow."""
    if cursor:
        created, ident = decode_cursor(cursor)
        query = query.where(or_(created_col < created, and_(created_col == created, id_col < ident)))
    return query.order_by(created_col.desc(), id_col.desc()).limit(limit + 1)


def next_cursor(rows: Sequence[T], limit: int, created_of: Any, id_of: Any) -> tuple[Sequence[T], str | None]:
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(created_of(rows[-1]), id_of(rows[-1]))
