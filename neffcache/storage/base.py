"""The object store interface, and the rules every store shares.

Objects are addressed by the sha256 of their bytes (a bare 64-char lowercase hex string), so an
object never changes once written, and a read can always be checked against its name. A put of
bytes that are already stored writes nothing, unless the stored copy no longer hashes to its name
(a corrupt object): then the verified upload replaces it. Everything that does not depend on where
the bytes end up lives here, once: validating digests, streaming an upload to a staging file while
hashing it, enforcing the size limit and the expected digest, fetching to a local path with
verification, verifying a stored object, and moving a corrupt one aside (quarantine). A concrete
store supplies only the primitives (`_stat`, `_open`, `_publish`, `_iter_objects`, ...).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, BinaryIO

from neffcache.digests import is_bare_hex
from neffcache.errors import CorruptObject, DigestMismatch, InvalidDigest, StorageError, TooLarge

log = logging.getLogger(__name__)

# Big enough that per-chunk overhead vanishes next to disk and network time, small enough that a
# multi-GiB upload never holds more than this in memory.
CHUNK_BYTES = 1024 * 1024


def validate_digest(value: object) -> str:
    """Return `value` if it is a bare lowercase hex sha256, else raise InvalidDigest naming it."""
    if not is_bare_hex(value):
        raise InvalidDigest(
            f"{value!r} is not a sha256 digest (64 lowercase hex characters)", digest=repr(value)
        )
    return value


def object_key(digest: str) -> str:
    """Where an object lives relative to the store's root or prefix: sha256/<2 hex>/<digest>.

    The two-character fan-out keeps any one folder (or S3 listing page) to 1/256 of the objects.
    """
    return f"sha256/{digest[:2]}/{digest}"


def quarantine_key(digest: str) -> str:
    """Where a corrupt object is moved aside to: quarantine/sha256/<2 hex>/<digest>. Outside the
    object layout, so the object reads as missing (HEAD 404) and the next upload recreates it."""
    return f"quarantine/{object_key(digest)}"


# The object a worker's health probe stores and reads back (`ObjectStore.probe`): a few bytes,
# content-addressed like every object, so every worker shares the one copy.
PROBE_BYTES = b"neffcache storage probe: a worker stores and reads this to know it can\n"


@dataclass(frozen=True)
class StoredObject:
    digest: str
    size: int
    # When the store last wrote it (S3's LastModified, a file's mtime), where the store says: the
    # GC sweeps an object no row names only once this is older than its grace period.
    modified_at: datetime | None = None


@dataclass(frozen=True)
class PutResult:
    digest: str
    size: int
    created: bool  # False when the object was already stored (and verified): nothing was written
    # True when a stored copy was there but corrupt, and these verified bytes replaced it.
    repaired: bool = False


@dataclass(frozen=True)
class Verification:
    """A stored object hashed end to end: `actual` is what its bytes hash to ("" when they were
    not hashed because their size alone proved them corrupt)."""

    digest: str
    size: int
    actual: str

    @property
    def ok(self) -> bool:
        return self.actual == self.digest


@dataclass(frozen=True)
class _StagedUpload:
    path: Path
    digest: str
    size: int


class ObjectStore(ABC):
    """Content-addressed blob store. Public methods validate digests and keep the shared rules;
    subclasses implement the underscore primitives and translate their own SDK/OS errors."""

    # --- writing ---------------------------------------------------------------------------

    def put(
        self,
        source: IO[bytes],
        expected_digest: str | None = None,
        max_bytes: int | None = None,
    ) -> PutResult:
        """Store the bytes read from `source` under their sha256.

        `source` is read in chunks into a staging file that is never visible under an object
        name; only a complete, verified file is published. On DigestMismatch or TooLarge nothing
        is kept. Bytes that are already stored are not written again (created=False), once the
        stored copy has been verified; a stored copy that does not hash to its name is replaced
        (created=True, repaired=True).
        """
        if expected_digest is not None:
            validate_digest(expected_digest)
        with self._staged_upload(source, max_bytes) as staged:
            if expected_digest is not None and staged.digest != expected_digest:
                raise DigestMismatch(
                    f"upload hashes to sha256 {staged.digest}, expected {expected_digest}",
                    expected=expected_digest,
                    actual=staged.digest,
                )
            # An existing object is not trusted blindly: if it were corrupt (a flipped bit on a
            # disk, a write behind the store's back), keeping it would make the upload of the right
            # bytes a no-op and the object unrepairable. Two sound choices: always overwrite with
            # the verified staged bytes (safe, content-addressed), or verify the stored copy and
            # replace it only when it does not match. We verify: it costs one read of the stored
            # copy, and only on a re-upload (rare: clients HEAD first); it does not rewrite what
            # is fine (on S3 a PUT costs more than a GET, and makes a new version and replication
            # traffic in a versioned bucket), and it finds the corruption, so it is reported.
            existing = self._stat(staged.digest)
            if existing is not None:
                check = self._verify(staged.digest, existing.size, staged.size)
                if check is not None and check.ok:
                    return PutResult(staged.digest, existing.size, created=False)
                if check is not None:
                    log.warning("stored object sha256:%s was corrupt (%s); replaced by a verified upload",
                                staged.digest, _describe_mismatch(check))
                self._publish(staged.path, staged.digest)
                # `check` None: it vanished between the stat and the read (a delete): plain create.
                return PutResult(staged.digest, staged.size, created=True, repaired=check is not None)
            self._publish(staged.path, staged.digest)
            return PutResult(staged.digest, staged.size, created=True)

    def put_path(self, path: Path, expected_digest: str | None = None) -> PutResult:
        """`put` of a local file (same rules; the file itself is left in place)."""
        with open(path, "rb") as source:
            return self.put(source, expected_digest=expected_digest)

    @contextmanager
    def _staged_upload(self, source: IO[bytes], max_bytes: int | None) -> Iterator[_StagedUpload]:
        """Copy `source` into a fresh staging file while hashing it; remove the file on exit
        unless `_publish` has already moved it away."""
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        staging_dir = self.staging_dir
        try:
            staging_dir.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(dir=staging_dir, prefix="upload-", suffix=".part")
        except OSError as exc:
            raise StorageError(f"cannot create a staging file in {staging_dir}: {exc}") from exc
        staging_path = Path(name)
        try:
            hasher = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as staging:
                while chunk := source.read(CHUNK_BYTES):
                    size += len(chunk)
                    # Checked per chunk so an oversized upload is refused as soon as it crosses
                    # the limit, not after it has filled the disk.
                    if max_bytes is not None and size > max_bytes:
                        raise TooLarge(
                            f"upload exceeds the limit of {max_bytes} bytes", max_bytes=max_bytes
                        )
                    hasher.update(chunk)
                    try:
                        staging.write(chunk)
                    except OSError as exc:
                        raise StorageError(f"cannot write to {staging_path}: {exc}") from exc
            yield _StagedUpload(staging_path, hasher.hexdigest(), size)
        finally:
            staging_path.unlink(missing_ok=True)

    # --- reading ---------------------------------------------------------------------------

    def stat(self, digest: str) -> StoredObject | None:
        """Size of a stored object, or None when it is not stored."""
        return self._stat(validate_digest(digest))

    def open(self, digest: str) -> BinaryIO | None:
        """A stream of the stored bytes (unverified; the caller closes it), or None on a miss."""
        return self._open(validate_digest(digest))

    def fetch_to_path(self, digest: str, dest: Path) -> bool:
        """Copy an object to `dest`, verifying its sha256 on the way. False on a miss.

        The copy goes to a temp file beside `dest` and is renamed over it only once verified,
        so `dest` never holds partial or corrupt bytes; on CorruptObject `dest` is left as it was.
        """
        stream = self._open(validate_digest(digest))
        if stream is None:
            return False
        dest = Path(dest)
        with stream:
            fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
            partial = Path(name)
            try:
                hasher = hashlib.sha256()
                with os.fdopen(fd, "wb") as out:
                    while chunk := stream.read(CHUNK_BYTES):
                        hasher.update(chunk)
                        out.write(chunk)
                actual = hasher.hexdigest()
                if actual != digest:
                    log.error("stored object sha256:%s is corrupt: it hashes to sha256:%s", digest, actual)
                    raise CorruptObject(
                        f"stored object {digest} hashes to {actual}", digest=digest, actual=actual
                    )
                os.replace(partial, dest)
            finally:
                partial.unlink(missing_ok=True)
        return True

    # --- integrity -------------------------------------------------------------------------

    def verify(self, digest: str) -> Verification | None:
        """Hash a stored object end to end (streamed, never held whole); None on a miss.
        `.ok` says whether it still hashes to its name; nothing is changed either way."""
        return self._verify(validate_digest(digest))

    def iter_objects(self) -> Iterator[StoredObject]:
        """Every stored object (digest and size), as the store lists them; quarantined objects
        and uploads in progress are not objects. Lazy: a store of millions is never held whole."""
        return self._iter_objects()

    def quarantine(self, digest: str) -> str | None:
        """Move a corrupt object aside (to `quarantine_key(digest)`), so that it reads as missing
        and the next upload of the right bytes recreates it; it is kept for inspection.

        The object is verified again first, so an object repaired since it was found corrupt
        stays where it is. Returns where the object went, or None when nothing was moved (it is
        not stored, or it is not corrupt)."""
        check = self._verify(validate_digest(digest))
        if check is None or check.ok:
            return None
        return self._quarantine(digest)

    def _verify(self, digest: str, stored_size: int | None = None, expected_size: int | None = None
                ) -> Verification | None:
        """`verify`, skipping the read when the stored size already differs from the size the
        object must have (`expected_size`, known to a put)."""
        if stored_size is not None and expected_size is not None and stored_size != expected_size:
            return Verification(digest, stored_size, actual="")
        stream = self._open(digest)
        if stream is None:
            return None
        hasher = hashlib.sha256()
        size = 0
        with stream:
            while chunk := stream.read(CHUNK_BYTES):
                hasher.update(chunk)
                size += len(chunk)
        return Verification(digest, size, hasher.hexdigest())

    # --- the rest --------------------------------------------------------------------------

    def delete(self, digest: str) -> None:
        """Remove an object; deleting one that is not stored is not an error."""
        self._delete(validate_digest(digest))

    def presigned_url(self, digest: str, expires_s: int, filename: str | None = None) -> str | None:
        """A URL that lets anyone GET the object until it expires, or None where the store has
        no such thing. Signing is local: this does not check that the object exists."""
        if expires_s <= 0:
            raise ValueError(f"expires_s must be positive, got {expires_s}")
        return self._presigned_url(validate_digest(digest), expires_s, filename)

    @abstractmethod
    def check(self) -> None:
        """Readiness: raise StorageError when the store does not answer or cannot be written."""

    def probe(self) -> None:
        """Readiness for a worker, which reads and writes objects: `check`, then a round trip of
        one small object (`put` stores it, or reads back and verifies the stored copy). A store
        that answers for its bucket but cannot serve objects yet (an S3 server whose volume
        servers are still starting, answering 500 to reads) fails this; StorageError then."""
        self.check()
        self.put(io.BytesIO(PROBE_BYTES))

    # --- what a concrete store provides ----------------------------------------------------

    @property
    @abstractmethod
    def staging_dir(self) -> Path:
        """Local folder for uploads in progress; never part of the object layout."""

    @abstractmethod
    def _publish(self, staged: Path, digest: str) -> None:
        """Make the complete, verified file `staged` visible as `digest`, atomically. It may
        move `staged` away; whatever it leaves behind is removed by the caller."""

    @abstractmethod
    def _stat(self, digest: str) -> StoredObject | None: ...

    @abstractmethod
    def _open(self, digest: str) -> BinaryIO | None: ...

    @abstractmethod
    def _delete(self, digest: str) -> None: ...

    @abstractmethod
    def _iter_objects(self) -> Iterator[StoredObject]:
        """Every object under the layout's `sha256/` names whose name is a valid digest."""

    @abstractmethod
    def _quarantine(self, digest: str) -> str | None:
        """Move the object to `quarantine_key(digest)` (replacing an earlier one there) and say
        where it went; None when it is no longer there."""

    @abstractmethod
    def _presigned_url(self, digest: str, expires_s: int, filename: str | None) -> str | None: ...


def _describe_mismatch(check: Verification) -> str:
    if not check.actual:
        return f"{check.size} bytes stored, another size than its bytes have"
    return f"its {check.size} bytes hash to sha256:{check.actual}"
