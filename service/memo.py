"""A small in-process cache whose entries live a few seconds: what the hit path keeps in memory
(token grants, registered toolchains, artifact rows, usage counts) so that a warm hit does not
ask the database. Each user says how stale its entries may be (README, "The hit path").

An entry is dropped at once when what it shows changes (service.invalidation: a token revoked, a
worker stopped, an artifact deleted, announced to every API process); `ttl_s` is the bound when
that announcement is lost. A value read before a drop and kept after it would undo the drop for
`ttl_s`: each drop starts a new epoch, and a value read in an earlier one is not kept."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A thread-safe map whose entries live `ttl_s` seconds (0: nothing is kept), at most
    `max_entries` of them (the least recently used go first)."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self._epoch = 0  # how many drops (discard, clear) so far

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if self.clock() >= entry[0]:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[1]

    @property
    def epoch(self) -> int:
        """Read it before reading a value to keep (`put(..., read_in=)`)."""
        return self._epoch

    def put(self, key: K, value: V, read_in: int | None = None) -> None:
        """Keep `value`; with `read_in` (the epoch when it was read), not if an entry was dropped
        since: it may predate the change that drop announced."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if read_in is not None and read_in != self._epoch:
                return
            self._entries[key] = (self.clock() + self.ttl_s, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def get_or_load(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The cached value, else `load()`'s (kept unless None: a miss is asked again next time)."""
        value = self.get(key)
        if value is None:
            read_in = self._epoch
            value = load()
            if value is not None:
                self.put(key, value, read_in)
        return value

    def discard(self, key: K) -> None:
        """Drop `key`'s entry (what it shows changed)."""
        with self._lock:
            self._epoch += 1
            self._entries.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._epoch += 1
            self._entries.clear()
