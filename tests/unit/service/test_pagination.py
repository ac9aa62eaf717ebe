"""service/pagination.py: a cursor is taken only if it is one the service could have issued
(checked by its round trip), so no other value reaches the database; and one issued by a
listing continues it."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neffcache.errors import InvalidParameter
from neffcache.service.pagination import decode_cursor, encode_cursor

JOB_ID = str(uuid.UUID(int=7))
KEY = "ab" * 32


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@given(st.datetimes(timezones=st.just(UTC)), st.sampled_from([JOB_ID, KEY, "0", "f" * 64]))
@settings(max_examples=200, deadline=None)
def test_every_cursor_the_service_issues_is_taken_back(created: datetime, ident: str) -> None:
    assert decode_cursor(encode_cursor(created, ident)) == (created, ident)


REFUSED = [
    ("not base64", "@@@"),
    ("no separator", _b64("2024-01-01T00:00:00+00:00")),
    ("not a time", _b64(f"yesterday|{JOB_ID}")),
    ("a naive time", _b64(f"2024-01-01T00:00:00|{JOB_ID}")),
    ("a time not in UTC", _b64(f"2024-01-01T00:00:00+02:00|{JOB_ID}")),
    ("out of range once in UTC", _b64(f"0001-01-01T00:00:00+14:00|{JOB_ID}")),
    ("Z, not +00:00", _b64(f"2024-01-01T00:00:00Z|{JOB_ID}")),
    ("a NUL in the id", _b64("2024-01-01T00:00:00+00:00|\x00")),
    ("an id of another form", _b64("2024-01-01T00:00:00+00:00|Robert'); DROP TABLE jobs;--")),
    ("an empty id", _b64("2024-01-01T00:00:00+00:00|")),
    ("not UTF-8", base64.urlsafe_b64encode(b"\xff\xfe|x").decode()),
    ("a NUL in the cursor", encode_cursor(datetime(2024, 1, 1, tzinfo=UTC), JOB_ID) + "\x00"),
    ("a surrogate in the cursor", "\ud800"),
    ("padding left out", encode_cursor(datetime(2024, 1, 1, tzinfo=UTC), JOB_ID).rstrip("=")),
    ("a character base64 skips", "*" + encode_cursor(datetime(2024, 1, 1, tzinfo=UTC), JOB_ID)),
]


@pytest.mark.parametrize("cursor", [c for _, c in REFUSED], ids=[why for why, _ in REFUSED])
def test_a_cursor_the_service_did_not_issue_is_400(cursor: str) -> None:
    with pytest.raises(InvalidParameter, match="^cursor: .* is not a cursor this service issued"):
        decode_cursor(cursor)


def test_an_aware_time_in_another_zone_is_not_taken_for_utc() -> None:
    other = datetime(2024, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    with pytest.raises(InvalidParameter):
        decode_cursor(encode_cursor(other, JOB_ID))
