"""Change a stored object behind the store's back: the only way to get a corrupt object."""

from __future__ import annotations

from neffcache.storage import ObjectStore
from neffcache.storage.filesystem import FilesystemObjectStore


def overwrite_stored_bytes(store: ObjectStore, digest_hex: str, data: bytes) -> None:
    if isinstance(store, FilesystemObjectStore):
        store.path_for(digest_hex).write_bytes(data)
        return
    from neffcache.storage.s3 import S3ObjectStore

    assert isinstance(store, S3ObjectStore)
    store.client.put_object(Bucket=store.bucket, Key=store.key_for(digest_hex), Body=data)
