"""A database and an object store holding artifacts put there as a worker would: for the tests
of the GC and of what the service says of storage."""

from __future__ import annotations

import hashlib
import io
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from neffcache.db.models import Artifact, ArtifactFile, ArtifactUsage, ObjectDeletion, Pin, PinnedArtifact, utcnow
from neffcache.db.session import Database
from neffcache.digests import digest_of
from neffcache.storage import ObjectStore

DAY = timedelta(days=1)


@dataclass
class Cache:
    """A database and a store with artifacts put in them as a worker would."""

    db: Database
    store: ObjectStore

    def put(self, data: bytes) -> str:
        return self.store.put(io.BytesIO(data)).digest

    def artifact(self, size: int = 100, namespace: str = "default", used: datetime | None = None,
                 created: datetime | None = None, shared: bytes | None = None) -> str:
        """An artifact of one file of `size` bytes (and one of `shared` bytes, when given)."""
        key = hashlib.sha256(uuid.uuid4().bytes).hexdigest()
        files = [("model.neff", bytes(key, "ascii")[:1] * size + key.encode())]
        if shared is not None:
            files.append(("compile.log", shared))
        manifest = {"namespace": namespace, "model": {"digest": "sha256:" + "0" * 64}, "target": "trn1",
                    "compiler": {"name": "neuronx-cc", "version": "2.0"}, "runtime": {"version": "2.0"}}
        rows = [ArtifactFile(name=name, digest=digest_of(self.put(data)), size=len(data)) for name, data in files]
        with self.db.session() as session:
            row = Artifact.from_manifest(key, manifest, rows, compile_seconds=1.0, job_id=None, annotations=None)
            row.created_at = created or utcnow() - 10 * DAY
            session.add(row)
            if used is not None:
                session.add(ArtifactUsage(key=key, lookup_hits=1, downloads=0, last_used_at=used))
        return key

    def pin(self, name: str, *keys: str, expires_at: datetime | None = None) -> None:
        with self.db.session() as session:
            session.add(Pin(name=name, owner="test", created_at=utcnow(), expires_at=expires_at,
                            entries=[PinnedArtifact(artifact_key=k) for k in keys]))

    def keys(self) -> set[str]:
        with self.db.session() as session:
            return set(session.scalars(select(Artifact.key)))

    def stored(self) -> set[str]:
        return {o.digest for o in self.store.iter_objects()}

    def files_of(self, key: str) -> list[str]:
        with self.db.session() as session:
            return [d.removeprefix("sha256:") for d in
                    session.scalars(select(ArtifactFile.digest).where(ArtifactFile.artifact_key == key))]

    def marks(self) -> dict[str, str]:
        with self.db.session() as session:
            return {m.digest: m.reason for m in session.scalars(select(ObjectDeletion))}
