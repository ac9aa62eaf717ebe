"""Scrubbing: verify stored objects end to end, report the corrupt ones, and optionally move them
aside (`neffcache-admin scrub`).

A corrupt object is found by reading it, so a scrub reads every object it checks (streamed, one
at a time). A store too large to read in one run is scrubbed a random sample per run: run it
often enough and every object is read eventually, with the listing (cheap) walked each time.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

from neffcache.digests import digest_of
from neffcache.errors import EXIT_INTEGRITY, EXIT_SUCCESS, EXIT_UNAVAILABLE, StorageError
from neffcache.humanize import human_bytes
from neffcache.storage.base import ObjectStore, StoredObject


@dataclass(frozen=True)
class CorruptFound:
    digest: str  # sha256:<hex>, the name it is stored under
    size: int
    actual: str  # sha256:<hex> of the bytes stored under that name
    quarantined: str | None = None  # where it was moved, when it was


@dataclass(frozen=True)
class Unreadable:
    digest: str
    detail: str


@dataclass
class ScrubReport:
    listed: int = 0  # objects in the store
    checked: int = 0  # objects read and hashed
    bytes_checked: int = 0
    vanished: int = 0  # listed, then gone before they were read (deleted meanwhile)
    corrupt: list[CorruptFound] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)

    @property
    def quarantined(self) -> int:
        return sum(1 for c in self.corrupt if c.quarantined)

    @property
    def exit_code(self) -> int:
        """5 (integrity failure) when any object is corrupt, else 6 when some could not be read."""
        if self.corrupt:
            return EXIT_INTEGRITY
        return EXIT_UNAVAILABLE if self.unreadable else EXIT_SUCCESS

    def to_json(self) -> dict[str, Any]:
        return {"listed": self.listed, "checked": self.checked, "bytes_checked": self.bytes_checked,
                "vanished": self.vanished, "corrupt": [asdict(c) for c in self.corrupt],
                "quarantined": self.quarantined, "unreadable": [asdict(u) for u in self.unreadable]}

    def summary(self) -> str:
        corrupt = f"{len(self.corrupt)} corrupt"
        if self.quarantined:
            corrupt += f" ({self.quarantined} quarantined)"
        line = (f"scrubbed {self.checked} of {self.listed} objects ({human_bytes(self.bytes_checked)}): "
                f"{corrupt}, {len(self.unreadable)} unreadable")
        return line + (f", {self.vanished} deleted meanwhile" if self.vanished else "")


def pick(store: ObjectStore, sample: int | None, rng: random.Random) -> tuple[list[StoredObject], int]:
    """The objects to check (all of them, or `sample` chosen uniformly at random: a reservoir, so
    only `sample` are held however many are listed) and how many were listed."""
    listed = 0
    chosen: list[StoredObject] = []
    for obj in store.iter_objects():
        listed += 1
        if sample is None or len(chosen) < sample:
            chosen.append(obj)
        elif (slot := rng.randrange(listed)) < sample:
            chosen[slot] = obj
    return chosen, listed


def scrub(store: ObjectStore, sample: int | None = None, quarantine: bool = False,
          rng: random.Random | None = None) -> ScrubReport:
    """Verify the store's objects (or a random `sample` of them); with `quarantine`, move each
    corrupt one aside so that it reads as missing and the next upload recreates it.

    One object that cannot be read (a StorageError) is reported and the scrub goes on; a store
    that cannot be listed raises StorageError."""
    if sample is not None and sample < 1:
        raise ValueError(f"sample must be at least 1, got {sample}")
    chosen, listed = pick(store, sample, rng or random.Random())
    report = ScrubReport(listed=listed)
    for obj in chosen:
        try:
            check = store.verify(obj.digest)
            if check is None:
                report.vanished += 1
                continue
            report.checked += 1
            report.bytes_checked += check.size
            if check.ok:
                continue
            where = store.quarantine(obj.digest) if quarantine else None
        except StorageError as exc:
            report.unreadable.append(Unreadable(digest_of(obj.digest), exc.detail))
            continue
        report.corrupt.append(CorruptFound(digest_of(obj.digest), check.size, digest_of(check.actual), where))
    return report
