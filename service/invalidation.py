"""Each API process listens for invalidations (neffcache.invalidation) and drops at once what it
keeps in memory for the hit path (service.memo) when what that shows changes: a token revoked by
any API process or `neffcache-admin`, a worker that stopped, an artifact deleted.

The listener is a thread started with the app (its lifespan) on a Redis connection of its own.
When it cannot listen (Redis down, restarted, the connection lost or silent), an entry lives out
its hot_cache_s, which stays the bound; each time it subscribes (again) it drops everything,
since it may have missed messages meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from neffcache.invalidation import Announce, Dropped, Invalidation, announce, channel
from neffcache.queue import connect_redis
from neffcache.service.memo import TtlCache
from neffcache.settings import Settings

if TYPE_CHECKING:
    from neffcache.service.context import ServiceContext

log = logging.getLogger(__name__)
POLL_S = 0.25  # how long one wait for a message lasts: the thread stops within this
KEEPALIVE_S = 5.0  # a PING this often; a connection silent for 3 of these is taken for lost
RETRY_S = 1.0  # after a failure, the next try to subscribe


class HotCaches(Protocol):
    """What an API process keeps for the hit path (ServiceContext has them)."""

    grants: TtlCache[str, Any]
    toolchains: TtlCache[str, Any]
    artifacts: TtlCache[str, Any]
    usage: TtlCache[str, Any]


def drop(caches: HotCaches, invalidation: Invalidation | None) -> None:
    """Drop what `invalidation` names; everything for a message this version does not know."""
    if invalidation is None:
        drop_everything(caches)
    elif invalidation.what == Dropped.GRANT:
        caches.grants.discard(invalidation.key)
    elif invalidation.what == Dropped.TOOLCHAINS:
        caches.toolchains.clear()
    else:
        caches.artifacts.discard(invalidation.key)
        caches.usage.discard(invalidation.key)


def drop_everything(caches: HotCaches) -> None:
    for cache in (caches.grants, caches.toolchains, caches.artifacts, caches.usage):
        cache.clear()


def announcer(ctx: ServiceContext) -> Announce:
    """Drops the entry in this process at once (Redis or not), then tells the others."""
    def send(invalidation: Invalidation) -> bool:
        drop(ctx, invalidation)
        return announce(ctx.redis, ctx.settings.queue_prefix, invalidation)

    return send


def forget_artifact(ctx: ServiceContext, key: str) -> bool:
    """For whatever deletes an artifact in an API process (the garbage collection), once the
    deletion is committed: every API process drops the artifact's row and usage counts at once.
    Whether Redis took the announcement (this process dropped them either way). Outside an API
    process, neffcache.invalidation.announce(redis, prefix, Invalidation.artifact(key)) does it."""
    return bool(announcer(ctx)(Invalidation.artifact(key)))


class Listener:
    """The thread that listens on the deployment's channel and drops what each message names.
    Nothing is started when nothing is kept (hot_cache_s 0)."""

    def __init__(self, caches: HotCaches, settings: Settings) -> None:
        self.caches = caches
        self.settings = settings
        self.subscribed = threading.Event()  # set while subscribed (tests wait on it)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False  # said so in the log, until subscribed again

    def start(self) -> None:
        if self.settings.hot_cache_s <= 0 or self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="neffcache-invalidations", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)  # a connect to a Redis that does not answer may take longer
            self._thread = None

    def _run(self) -> None:
        redis = connect_redis(self.settings.redis_url)
        try:
            while not self._stopping.is_set():
                try:
                    self._listen(redis)
                except Exception as exc:  # noqa: BLE001 - Redis down, restarted, unreachable: try again
                    if not self._failing:
                        log.warning("not listening for invalidations (Redis: %s): this process drops what it "
                                    "keeps in memory only as it expires (hot_cache_s %g s) until it can",
                                    exc, self.settings.hot_cache_s)
                    self._failing = True
                self._stopping.wait(RETRY_S)
        finally:
            redis.close()

    def _listen(self, redis: Any) -> None:
        """Until stopped; raises when the connection fails or stays silent."""
        pubsub = redis.pubsub()
        try:
            pubsub.subscribe(channel(self.settings.queue_prefix))
            heard = pinged = time.monotonic()
            while not self._stopping.is_set():
                message = pubsub.get_message(timeout=POLL_S)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    self._handle(message)
                elif now - heard > 3 * KEEPALIVE_S:
                    raise ConnectionError(f"no answer to PING for {now - heard:.0f} s")
                if now - pinged >= KEEPALIVE_S:
                    pubsub.ping()
                    pinged = now
        finally:
            self.subscribed.clear()
            pubsub.close()

    def _handle(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":
            # Subscribed, at first or again (redis-py resubscribes a connection it had to make
            # anew): whatever was announced before may have been missed.
            drop_everything(self.caches)
            self.subscribed.set()
            if self._failing:
                log.warning("listening for invalidations again; dropped everything kept in memory")
                self._failing = False
        elif message["type"] == "message":
            drop(self.caches, Invalidation.decode(message["data"]))
