"""The folder store: objects as files under a root folder (the embedded default, and tests).

Layout: <root>/sha256/<2 hex>/<digest> for objects, <root>/tmp/ for uploads in progress,
<root>/quarantine/sha256/<2 hex>/<digest> for corrupt objects moved aside. The
staging folder sits under the root so that publishing is an os.replace within one filesystem,
which is atomic: a reader sees either no file or the complete one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from neffcache.digests import is_bare_hex
from neffcache.errors import StorageError
from neffcache.storage.base import ObjectStore, StoredObject, object_key, quarantine_key

# Objects are immutable once published; group/world read lets a co-located file server or a
# backup job read them without running as the service's user.
_OBJECT_MODE = 0o644


@contextmanager
def _os_errors(action: str) -> Iterator[None]:
    """Report an OSError as StorageError; the callers turn the expected misses into None first."""
    try:
        yield
    except OSError as exc:
        raise StorageError(f"object folder: cannot {action}: {exc}") from exc


class FilesystemObjectStore(ObjectStore):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # A folder that cannot be created is not an error yet: like an unreachable S3, it is
        # reported by check() (the readiness probe) and by the first write, so a service can
        # start and say why it is not ready.
        try:
            (self.root / "sha256").mkdir(parents=True, exist_ok=True)
            self.staging_dir.mkdir(exist_ok=True)
        except OSError:
            pass

    def __repr__(self) -> str:
        return f"FilesystemObjectStore({str(self.root)!r})"

    @property
    def staging_dir(self) -> Path:
        return self.root / "tmp"

    def path_for(self, digest: str) -> Path:
        """The file an object is (or would be) stored in."""
        return self.root / object_key(digest)

    def check(self) -> None:
        with _os_errors(f"write to {self.root}"):
            self.staging_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.staging_dir, prefix="check-") as probe:
                probe.write(b"ok")
                probe.flush()

    def _publish(self, staged: Path, digest: str) -> None:
        final = self.path_for(digest)
        with _os_errors(f"publish {digest}"):
            final.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(staged, _OBJECT_MODE)
            # Flush the bytes before the rename makes them visible, so a crash cannot leave a
            # published name pointing at a file the disk never received.
            with open(staged, "rb") as staged_file:
                os.fsync(staged_file.fileno())
            os.replace(staged, final)

    def _stat(self, digest: str) -> StoredObject | None:
        try:
            size = self.path_for(digest).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"object folder: cannot stat {digest}: {exc}") from exc
        return StoredObject(digest, size)

    def _open(self, digest: str) -> BinaryIO | None:
        try:
            return open(self.path_for(digest), "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"object folder: cannot open {digest}: {exc}") from exc

    def _delete(self, digest: str) -> None:
        with _os_errors(f"delete {digest}"):
            self.path_for(digest).unlink(missing_ok=True)

    def _iter_objects(self) -> Iterator[StoredObject]:
        objects = self.root / "sha256"
        with _os_errors(f"list {objects}"):
            fanout = sorted(d for d in os.listdir(objects) if len(d) == 2) if objects.is_dir() else []
        for part in fanout:
            try:
                with os.scandir(objects / part) as entries:
                    names = sorted((e.name, e) for e in entries if e.is_file(follow_symlinks=False))
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"object folder: cannot list {objects / part}: {exc}") from exc
            for name, entry in names:
                if not (is_bare_hex(name) and name.startswith(part)):
                    continue  # not an object of this layout (a stray file): not ours to judge
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed
                except OSError as exc:
                    raise StorageError(f"object folder: cannot stat {name}: {exc}") from exc
                yield StoredObject(name, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))

    def _quarantine(self, digest: str) -> str | None:
        aside = self.root / quarantine_key(digest)
        with _os_errors(f"quarantine {digest}"):
            aside.parent.mkdir(parents=True, exist_ok=True)
            try:
                # One rename within the root's filesystem: the name is gone and the bytes are kept.
                os.replace(self.path_for(digest), aside)
            except FileNotFoundError:
                return None  # deleted meanwhile: nothing to move
        return str(aside)

    def _presigned_url(self, digest: str, expires_s: int, filename: str | None) -> str | None:
        # A folder has no URL of its own: the service streams these objects itself.
        return None
