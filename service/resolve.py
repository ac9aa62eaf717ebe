"""Artifacts and jobs named by a unique prefix of their key or id, as git names commits.

Every route that takes a key or a job id in its path resolves it here, so `neffcache show
901c66ed` (the short key the `jobs` table prints) and `neffcache logs 394a1b2c` work:

- a key is 8 to 64 hex characters; a job id is a prefix of its UUID as printed (8 hex
  characters at least, then the rest with its dashes). Anything else (a NUL, a trailing newline,
  any character outside that form) is 400 `invalid_parameter` naming the field, before the
  database is asked.
- no match is 404 `not_found`; more than one is `ambiguous_prefix` (409) listing a few of them.

The query is a range on the primary key, `prefix <= key < prefix || 'g'`, which the primary
key's index answers on Postgres and SQLite alike (a LIKE 'prefix%' alone would not use it on a
Postgres database with a non-C collation). Hex digits sort below 'g' in the C collation and in
the usual locale ones, where a dash sorts below it too or is ignored; a LIKE 'prefix%' beside
the range keeps the answer exact whatever the collation. At most CANDIDATES_SHOWN + 1 rows are
read (and counted, only when ambiguous); a full-length key or id is one equality lookup.
"""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from neffcache.db.models import Artifact, Job
from neffcache.digests import MIN_KEY_PREFIX, is_key_prefix
from neffcache.errors import AmbiguousPrefix, InvalidParameter, NotFound

# What naming an artifact or a job by its key, id or a prefix can be answered with (resolve_*).
PREFIX_ERRORS = (InvalidParameter, NotFound, AmbiguousPrefix)
MIN_PREFIX = MIN_KEY_PREFIX
KEY_LENGTH = 64
JOB_ID_LENGTH = 36
CANDIDATES_SHOWN = 5

# The forms as the OpenAPI document states them (either case: a value is lowercased, then checked).
_HEX = "[0-9a-fA-F]"
KEY_PREFIX_PATTERN = rf"^{_HEX}{{{MIN_PREFIX},{KEY_LENGTH}}}$"
KEY_FILTER_PATTERN = rf"^(?:{_HEX}{{{MIN_PREFIX},{KEY_LENGTH}}})?$"  # a query filter: empty is no filter
# A prefix of "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" that holds the first group whole.
JOB_PREFIX_PATTERN = (rf"^{_HEX}{{8}}(?:-(?:{_HEX}{{1,4}}(?:-(?:{_HEX}{{1,4}}(?:-(?:{_HEX}{{1,4}}"
                      rf"(?:-{_HEX}{{0,12}})?)?)?)?)?)?)?$")
_JOB_PREFIX = re.compile(JOB_PREFIX_PATTERN)
# The path parameters that name an artifact or a job, as routes declare them: the pattern is for
# the OpenAPI document; the value is checked here (key_prefix, job_prefix), with the field named.
KeyInPath = Annotated[str, Path(description=f"an artifact key, or a unique prefix of it ({MIN_PREFIX} to "
                                            f"{KEY_LENGTH} hex characters)",
                                json_schema_extra={"pattern": KEY_PREFIX_PATTERN})]
JobIdInPath = Annotated[str, Path(description=f"a job id, or a unique prefix of it (its first {MIN_PREFIX} hex "
                                              f"characters at least, with its dashes)",
                                  json_schema_extra={"pattern": JOB_PREFIX_PATTERN})]
# Above every hex digit and '-': the range's exclusive upper end.
_PAST_HEX = "g"


def _shown(value: str) -> str:
    return repr(value if len(value) <= 80 else value[:80] + "…")


def key_prefix(value: str, field: str = "key") -> str:
    """The artifact key prefix in `value` (lowercased), or 400 invalid_parameter naming `field`."""
    prefix = value.lower()
    if not is_key_prefix(prefix):
        raise InvalidParameter(
            f"{field}: {_shown(value)} is not an artifact key or a prefix of one "
            f"({MIN_PREFIX} to {KEY_LENGTH} hex characters)",
            field=field,
        )
    return prefix


def job_prefix(value: str, field: str = "job_id") -> str:
    """The job id prefix in `value` (lowercased), or 400 invalid_parameter naming `field`."""
    prefix = value.lower()
    if len(prefix) > JOB_ID_LENGTH or not _JOB_PREFIX.fullmatch(prefix):
        raise InvalidParameter(
            f"{field}: {_shown(value)} is not a job id or a prefix of one (its first {MIN_PREFIX} "
            f"hex characters at least, e.g. 394a1b2c or 394a1b2c-5d6e)",
            field=field,
        )
    return prefix


def _unique(session: Session, column: InstrumentedAttribute[str], prefix: str, full_length: int,
            what: str, field: str) -> str:
    """The one value of `column` that starts with `prefix`; NotFound or AmbiguousPrefix otherwise."""
    if len(prefix) == full_length:
        found = list(session.scalars(select(column).where(column == prefix)))
    else:
        matching = (column >= prefix, column < prefix + _PAST_HEX, column.startswith(prefix, autoescape=True))
        found = list(session.scalars(select(column).where(*matching).order_by(column).limit(CANDIDATES_SHOWN + 1)))
        if len(found) > 1:
            count = session.scalar(select(func.count()).select_from(column.class_).where(*matching)) or len(found)
            shown = found[:CANDIDATES_SHOWN]
            more = f" and {count - len(shown)} more" if count > len(shown) else ""
            raise AmbiguousPrefix(
                f"{field}: {prefix} is ambiguous, {count} {what}s start with it: {', '.join(shown)}{more}; "
                f"give more characters",
                field=field, prefix=prefix, matches=count, candidates=shown,
            )
    if not found:
        detail = (f"{what} {prefix} does not exist" if len(prefix) == full_length
                  else f"no {what} starts with {prefix} ({field})")
        raise NotFound(detail, **{"key" if what == "artifact" else "job": prefix})
    return found[0]


def resolve_key(session: Session, value: str, field: str = "key") -> str:
    """The full key of the one artifact whose key starts with `value`."""
    return _unique(session, Artifact.key, key_prefix(value, field), KEY_LENGTH, "artifact", field)


def resolve_artifact(session: Session, value: str, field: str = "key") -> Artifact:
    """The one artifact whose key starts with `value` (8 to 64 hex characters)."""
    key = resolve_key(session, value, field)
    artifact = session.get(Artifact, key)
    if artifact is None:  # not possible while artifacts are immutable and never deleted
        raise NotFound(f"artifact {key} does not exist", key=key)
    return artifact


def resolve_job_id(session: Session, value: str, field: str = "job_id") -> str:
    """The full id of the one job whose id starts with `value`."""
    return _unique(session, Job.id, job_prefix(value, field), JOB_ID_LENGTH, "job", field)


def resolve_job(session: Session, value: str, field: str = "job_id") -> Job:
    """The one job whose id starts with `value` (its first 8 hex characters at least)."""
    job_id = resolve_job_id(session, value, field)
    job = session.get(Job, job_id)
    if job is None:  # not possible while jobs are never deleted
        raise NotFound(f"job {job_id} does not exist", job=job_id)
    return job
