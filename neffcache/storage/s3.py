"""The S3 store: objects as keys <prefix>/sha256/<2 hex>/<digest> in one bucket (corrupt ones moved
aside to <prefix>/quarantine/sha256/<2 hex>/<digest>).

Uploads are staged and verified in a local temp file first and then sent with one upload call;
S3 makes an object visible only once its upload completes (multipart included), so a reader never
sees a partial object. Every botocore/boto3 error is translated to StorageError here, at the
boundary: nothing above this module knows about the SDK.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote

import boto3
import urllib3.exceptions
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from neffcache.digests import is_bare_hex
from neffcache.errors import StorageError
from neffcache.storage.base import CHUNK_BYTES, ObjectStore, StoredObject, object_key, quarantine_key

if TYPE_CHECKING:
    from neffcache.settings import Settings

# What S3 (and S3-compatible servers) answer for a key that is not there: HEAD has no body, so
# it gives only the bare status; GET says NoSuchKey.
_MISSING_CODES = frozenset({"404", "NoSuchKey", "NotFound"})

# Errors raised while reading a response body: botocore wraps most of them, not all.
_STREAM_ERRORS = (BotoCoreError, urllib3.exceptions.HTTPError, OSError)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{error.get('Code', '?')} (HTTP {status}): {error.get('Message', exc)}"
    return f"{type(exc).__name__}: {exc}"


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in _MISSING_CODES


def _call(
    action: str, operation: Callable[..., Any], *, miss_is_none: bool = False, **kwargs: Any
) -> Any:
    """Run one SDK call, translating its errors: a missing key is None where `miss_is_none`,
    anything else is StorageError saying what was being done."""
    try:
        return operation(**kwargs)
    except ClientError as exc:
        if miss_is_none and _is_missing(exc):
            return None
        raise StorageError(f"S3: cannot {action}: {_describe(exc)}") from exc
    except (BotoCoreError, Boto3Error) as exc:
        raise StorageError(f"S3: cannot {action}: {_describe(exc)}") from exc


def _content_disposition(filename: str) -> str:
    """`attachment` with the filename both as a plain ASCII fallback and RFC 5987-encoded, so
    any name survives and no quote or control character can break out of the header."""
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\' else "_" for c in filename
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class _TranslatedBody(io.RawIOBase):
    """A GET response body whose read errors surface as StorageError, like every other S3
    failure, even though the reading happens after `open` has returned."""

    def __init__(self, body: Any, digest: str) -> None:
        self._body = body
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except _STREAM_ERRORS as exc:
            raise StorageError(f"S3: cannot read {self._digest}: {_describe(exc)}") from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


class S3ObjectStore(ObjectStore):
    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        staging_dir: Path | None = None,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # The system temp folder (TMPDIR) unless told otherwise: staging needs room for the
        # largest upload in flight, and need not be on any particular filesystem.
        self._staging_dir = Path(staging_dir or tempfile.gettempdir())

    @classmethod
    def from_settings(cls, settings: Settings, bucket: str, prefix: str = "") -> S3ObjectStore:
        config = Config(
            region_name=settings.s3_region,
            connect_timeout=5,
            read_timeout=60,
            retries={"max_attempts": 3, "mode": "standard"},
            # A custom endpoint (SeaweedFS, MinIO, a VPC endpoint by IP) rarely resolves
            # bucket-name subdomains; AWS itself is happiest with its default.
            s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
            config=config,
        )
        return cls(client, bucket, prefix)

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @property
    def staging_dir(self) -> Path:
        return self._staging_dir

    @staging_dir.setter
    def staging_dir(self, path: Path) -> None:
        self._staging_dir = Path(path)

    def key_for(self, digest: str) -> str:
        """The key an object is (or would be) stored under."""
        return self._prefixed(object_key(digest))

    def _prefixed(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def check(self) -> None:
        # HEAD of the bucket proves the endpoint answers, the credentials are accepted and the
        # bucket exists, without writing on every readiness probe.
        _call(f"reach bucket {self.bucket!r}", self.client.head_bucket, Bucket=self.bucket)

    def _publish(self, staged: Path, digest: str) -> None:
        _call(
            f"upload {digest}",
            self.client.upload_file,
            Filename=str(staged),
            Bucket=self.bucket,
            Key=self.key_for(digest),
            ExtraArgs={"ContentType": "application/octet-stream"},
            Config=TransferConfig(io_chunksize=CHUNK_BYTES),
        )

    def _stat(self, digest: str) -> StoredObject | None:
        # HEAD has no body, so a missing bucket also reads as a bare 404 here: a miss. check()
        # is what reports a misconfigured bucket.
        response = _call(
            f"stat {digest}",
            self.client.head_object,
            miss_is_none=True,
            Bucket=self.bucket,
            Key=self.key_for(digest),
        )
        return None if response is None else StoredObject(digest, int(response["ContentLength"]))

    def _open(self, digest: str) -> BinaryIO | None:
        response = _call(
            f"get {digest}",
            self.client.get_object,
            miss_is_none=True,
            Bucket=self.bucket,
            Key=self.key_for(digest),
        )
        if response is None:
            return None
        return io.BufferedReader(_TranslatedBody(response["Body"], digest), CHUNK_BYTES)

    def _delete(self, digest: str) -> None:
        # S3 answers 204 for a key that is not there, so this is idempotent as it stands.
        _call(
            f"delete {digest}",
            self.client.delete_object,
            Bucket=self.bucket,
            Key=self.key_for(digest),
        )

    def _iter_objects(self) -> Iterator[StoredObject]:
        listed = self._prefixed("sha256/")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=listed)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    digest = item["Key"].rsplit("/", 1)[-1]
                    # Only keys of this layout are objects; anything else there is not ours to judge.
                    if is_bare_hex(digest) and item["Key"] == self.key_for(digest):
                        yield StoredObject(digest, int(item["Size"]), item.get("LastModified"))
        except ClientError as exc:
            raise StorageError(f"S3: cannot list {listed!r}: {_describe(exc)}") from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageError(f"S3: cannot list {listed!r}: {_describe(exc)}") from exc

    def _quarantine(self, digest: str) -> str | None:
        # S3 cannot rename: copy aside (a managed copy: objects over 5 GiB need a multipart one),
        # then delete. An upload that repairs the object between the caller's check and the
        # delete is deleted with it; it then reads as missing, and the next upload recreates it.
        aside = self._prefixed(quarantine_key(digest))

        def copy_aside() -> bool:
            self.client.copy(
                CopySource={"Bucket": self.bucket, "Key": self.key_for(digest)},
                Bucket=self.bucket,
                Key=aside,
                Config=TransferConfig(io_chunksize=CHUNK_BYTES),
            )
            return True

        if _call(f"copy {digest} to {aside}", copy_aside, miss_is_none=True) is None:
            return None  # deleted meanwhile: nothing to move
        self._delete(digest)
        return f"s3://{self.bucket}/{aside}"

    def _presigned_url(self, digest: str, expires_s: int, filename: str | None) -> str | None:
        params = {"Bucket": self.bucket, "Key": self.key_for(digest)}
        if filename:
            params["ResponseContentDisposition"] = _content_disposition(filename)
        return _call(
            f"sign a URL for {digest}",
            self.client.generate_presigned_url,
            ClientMethod="get_object",
            Params=params,
            ExpiresIn=expires_s,
        )
