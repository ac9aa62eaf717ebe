"""The object store interface, and the rules every store shares.

Objects are addressed by the sha256 of their bytes (a bare 64-char lowercase hex string), so an
object never changes once written: a put of bytes that are already stored is a no-op, and a read
can always be checked against its name. Everything that does not depend on where the bytes end up
lives here, once: validating digests, streaming an upload to a staging file while hashing it,
enforcing the size limit and the expected digest, and fetching to a local path with verification.
A concrete store supplies only the primitives (`_stat`, `_open`, `_publish`, ...).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from neffcache.digests import is_bare_hex
from neffcache.errors import CorruptObject, DigestMismatch, InvalidDigest, StorageError, TooLarge

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


@dataclass(frozen=True)
class StoredObject:
    digest: str
    size: int


@dataclass(frozen=True)
class PutResult:
    digest: str
    size: int
    created: bool  # False when the object was already stored: nothing was written


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
        is kept. Bytes that are already stored are hashed but not written again (created=False).
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
            existing = self._stat(staged.digest)
            if existing is not None:
                return PutResult(staged.digest, existing.size, created=False)
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
                    raise CorruptObject(
                        f"stored object {digest} hashes to {actual}", digest=digest, actual=actual
                    )
                os.replace(partial, dest)
            finally:
                partial.unlink(missing_ok=True)
        return True

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
    def _presigned_url(self, digest: str, expires_s: int, filename: str | None) -> str | None: ...
