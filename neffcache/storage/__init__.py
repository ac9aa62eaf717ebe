"""Object storage: content-addressed blobs in a folder or in S3, behind `ObjectStore`.

Importing this package imports no SDK and connects to nothing; `open_store` builds the store
the settings name (boto3 is imported only when that is S3).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from neffcache.errors import StorageError
from neffcache.settings import Settings
from neffcache.storage.base import ObjectStore, PutResult, StoredObject, Verification, validate_digest
from neffcache.storage.filesystem import FilesystemObjectStore

__all__ = [
    "FilesystemObjectStore",
    "ObjectStore",
    "PutResult",
    "StoredObject",
    "Verification",
    "open_store",
    "validate_digest",
]


def open_store(settings: Settings) -> ObjectStore:
    """The store `settings.storage_url` names.

    "s3://bucket/optional/prefix" is S3 (client from the s3_* settings); "file:///abs/path" or a
    plain path is a folder, created if missing. Nothing is contacted here: `check()` does that.
    """
    url = settings.storage_url
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"storage_url {url!r} names no bucket (s3://bucket/prefix)")
        from neffcache.storage.s3 import S3ObjectStore  # boto3 only when S3 is configured

        return S3ObjectStore.from_settings(settings, parsed.netloc, parsed.path.strip("/"))
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"storage_url {url!r}: file URLs must be local (file:///abs/path)")
        return FilesystemObjectStore(Path(unquote(parsed.path)))
    # A single letter is a Windows drive ("C:\\..."), i.e. a plain path, not a scheme.
    if len(parsed.scheme) > 1:
        raise StorageError(
            f"storage_url {url!r}: unsupported scheme {parsed.scheme!r} (use s3:// or file://)"
        )
    return FilesystemObjectStore(Path(url))
