"""What every request handler needs, built once from Settings when the app starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from neffcache.db.models import Artifact
from neffcache.db.session import Database
from neffcache.lifecycle import SharedDecisions
from neffcache.queue import connect_redis
from neffcache.sdk import SdkTable
from neffcache.service.events import EventRecorder
from neffcache.service.invalidation import Listener
from neffcache.service.memo import TtlCache
from neffcache.service.metrics import ServiceMetrics
from neffcache.service.toolchains import RegisteredToolchain, registered_toolchains
from neffcache.settings import Settings
from neffcache.storage import ObjectStore, open_store


@dataclass
class ServiceContext:
    settings: Settings
    db: Database
    store: ObjectStore
    sdk: SdkTable = field(default_factory=SdkTable.load)
    metrics: ServiceMetrics = field(init=False)
    events: EventRecorder = field(init=False)
    # What the hit path keeps in memory for settings.hot_cache_s (service.memo): token grants by
    # the token's sha256, the registered toolchains, artifact rows by key (artifacts are
    # immutable), and usage counts by key (service.cache.artifact_hits).
    grants: TtlCache[str, Any] = field(init=False)
    toolchains: TtlCache[str, list[RegisteredToolchain]] = field(init=False)
    artifacts: TtlCache[str, Artifact] = field(init=False)
    usage: TtlCache[str, Any] = field(init=False)
    # Request bodies the routes answered as warm hits, for the hit lane (service.hit_lane).
    warm_bodies: TtlCache[tuple[str, bytes], Any] = field(init=False)
    # The compile decisions (create or join a key's job) this process is making, by key: a storm
    # of identical requests waits for one instead of each asking the database (service.cache).
    compile_decisions: SharedDecisions[Any] = field(init=False, default_factory=SharedDecisions)
    # Drops those entries when what they show changes, told by any process (service.invalidation).
    invalidations: Listener = field(init=False)
    ALL_TOOLCHAINS: ClassVar[str] = "all"  # the one entry of `toolchains`

    def __post_init__(self) -> None:
        self.metrics = ServiceMetrics(self.db, self.settings)
        self.events = EventRecorder(self.db, self.metrics, self.settings.event_flush_s)
        ttl = self.settings.hot_cache_s
        self.grants, self.toolchains, self.artifacts, self.usage = (TtlCache(ttl), TtlCache(ttl), TtlCache(ttl),
                                                                    TtlCache(ttl))
        self.warm_bodies = TtlCache(ttl, max_entries=4096)
        self.invalidations = Listener(self, self.settings)

    def registered_toolchains(self) -> list[RegisteredToolchain]:
        """The toolchains of live workers (service.toolchains), read at most every hot_cache_s."""
        def load() -> list[RegisteredToolchain]:
            with self.db.session() as session:
                return registered_toolchains(session, self.settings.toolchain_ttl_s)

        return self.toolchains.get_or_load(self.ALL_TOOLCHAINS, load) or []

    @cached_property
    def redis(self) -> Any:
        # Built on first use: creating the client does not connect either.
        return connect_redis(self.settings.redis_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceContext:
        # A connection per request thread, and two for the event writer and /metrics' collector.
        database = Database(settings.database_url, pool_size=settings.api_threads + 2)
        return cls(settings=settings, db=database, store=open_store(settings))

    def close(self) -> None:
        self.invalidations.stop()
        self.events.stop()  # flushes what is pending
        self.db.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
