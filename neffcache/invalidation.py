"""Telling every API process to drop what it keeps in memory for the hit path (service.memo)
when what that shows changes: a token revoked, a worker stopped, an artifact deleted.

Whoever makes the change announces it on the deployment's Redis pub/sub channel (named by its
queue prefix, as its queues are) once the change is committed; each API process listens
(service.invalidation) and drops the entry at once. Shared by the service (the tokens route),
the admin command (through neffcache.tokens) and the workers (a worker that stops), so it lives
here, below all three.

A message can be lost: Redis down or restarted, a listener reconnecting, an announcer that
cannot reach Redis. An entry then lives out its hot_cache_s, which stays the bound; a listener
that subscribes again drops everything, since it may have missed messages.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from neffcache.queue import connect_redis

log = logging.getLogger(__name__)
# session.info's key for the announcements waiting for the session's commit.
_PENDING = "neffcache.invalidations"


class Dropped(StrEnum):
    GRANT = "grant"  # a token's grant, by the token's sha256
    TOOLCHAINS = "toolchains"  # the view of the registered toolchains (no key: there is one)
    ARTIFACT = "artifact"  # an artifact's row and its usage counts, by key


@dataclass(frozen=True)
class Invalidation:
    what: Dropped
    key: str = ""

    @classmethod
    def grant(cls, token_sha256: str) -> Invalidation:
        return cls(Dropped.GRANT, token_sha256)

    @classmethod
    def toolchains(cls) -> Invalidation:
        return cls(Dropped.TOOLCHAINS)

    @classmethod
    def artifact(cls, key: str) -> Invalidation:
        return cls(Dropped.ARTIFACT, key)

    def encode(self) -> str:
        return json.dumps({"what": self.what.value, "key": self.key})

    @classmethod
    def decode(cls, data: bytes | str) -> Invalidation | None:
        """The message's invalidation, or None when it is not one this version knows."""
        try:
            fields = json.loads(data)
            return cls(Dropped(fields["what"]), str(fields.get("key", "")))
        except (ValueError, KeyError, TypeError):
            return None


Announce = Callable[[Invalidation], object]


def channel(queue_prefix: str) -> str:
    """The deployment's channel: deployments (and test runs) sharing one Redis do not hear each other."""
    return f"{queue_prefix}:hot-cache"


def announce(redis: Any, queue_prefix: str, invalidation: Invalidation) -> bool:
    """Publish `invalidation`; whether Redis took it. When it did not (logged), each API process
    drops the entry only as it expires (hot_cache_s)."""
    try:
        redis.publish(channel(queue_prefix), invalidation.encode())
    except Exception as exc:  # noqa: BLE001 - Redis down or unreachable: the change itself is made
        log.warning("could not tell the API processes that %s %s changed (Redis: %s); they drop what they "
                    "keep of it within hot_cache_s", invalidation.what.value, invalidation.key[:16], exc)
        return False
    return True


def publisher(redis_url: str, queue_prefix: str) -> Announce:
    """Announces through a connection of its own, made for each announcement and closed after
    it: for a process that announces once (neffcache-admin) and keeps no Redis client."""
    def send(invalidation: Invalidation) -> bool:
        redis = connect_redis(redis_url)
        try:
            return announce(redis, queue_prefix, invalidation)
        finally:
            redis.close()

    return send


def nobody(_: Invalidation) -> bool:
    """Announces to no one: for a database no API process serves (tests, one-off tools)."""
    return False


def after_commit(session: Session, invalidation: Invalidation, send: Announce) -> None:
    """Announce `invalidation` once `session` commits, never if it rolls back. Not before the
    commit: a process that dropped its entry could read the row again before the change is
    committed, and keep the old one."""
    pending: list[tuple[Announce, Invalidation]] | None = session.info.get(_PENDING)
    if pending is None:
        pending = session.info[_PENDING] = []
        event.listen(session, "after_commit", _announce_pending)
        event.listen(session, "after_rollback", _forget_pending)
    pending.append((send, invalidation))


def _announce_pending(session: Session) -> None:
    pending = session.info.get(_PENDING, [])
    while pending:
        send, invalidation = pending.pop(0)
        send(invalidation)


def _forget_pending(session: Session) -> None:
    session.info.get(_PENDING, []).clear()
