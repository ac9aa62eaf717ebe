"""What every request handler needs, built once from Settings when the app starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from neffcache.db.session import Database
from neffcache.queue import connect_redis
from neffcache.sdk import SdkTable
from neffcache.service.events import EventRecorder
from neffcache.service.metrics import ServiceMetrics
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

    def __post_init__(self) -> None:
        self.metrics = ServiceMetrics(self.db, self.settings)
        self.events = EventRecorder(self.db, self.metrics, self.settings.event_flush_s)

    @cached_property
    def redis(self) -> Any:
        # Built on first use: creating the client does not connect either.
        return connect_redis(self.settings.redis_url)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceContext:
        return cls(settings=settings, db=Database(settings.database_url), store=open_store(settings))

    def close(self) -> None:
        self.events.stop()  # flushes what is pending
        self.db.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
