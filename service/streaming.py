"""Stored objects the service streams itself, verified as they go.

Every byte the service sends from the object store (a blob, an artifact file in folder-store
mode, a job's log) goes through `verified_chunks`: it hashes the whole object while streaming it
and holds the last chunk back until the digest is known. On a mismatch it counts and logs the
corrupt object and raises instead of sending that chunk, so the transfer fails (the server cuts
the connection: Content-Length is not met, or a chunked body has no terminator) rather than ending
as a 200 with the wrong bytes. An object that fits in the first chunk (most logs) is verified
before the response starts, and a corrupt one is a clean 502 `corrupt_object`.

Where the store can sign URLs (S3) the client downloads from S3 itself: the redirect carries the
digest in `X-Neffcache-Sha256`, and checking it is the client's job (`neffcache` does).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Iterator
from typing import BinaryIO

from fastapi import Response
from fastapi.responses import RedirectResponse, StreamingResponse

from neffcache.errors import CorruptObject
from neffcache.service.context import ServiceContext
from neffcache.storage.base import CHUNK_BYTES

log = logging.getLogger(__name__)


def verified_chunks(stream: BinaryIO, digest: str, on_corrupt: Callable[[str], None], skip: int = 0,
                    chunk_size: int = CHUNK_BYTES, what: str | None = None) -> Iterator[bytes]:
    """Yield the bytes of `stream` after its first `skip`, and close it; raise CorruptObject
    (after calling `on_corrupt(actual)`) instead of yielding the last chunk when the whole stream
    does not hash to `digest` (bare hex). The skipped bytes are read and hashed too. `what` names
    the object in the error (default: "stored object <digest>")."""
    hasher = hashlib.sha256()
    held: bytes | None = None  # the latest chunk, sent only once the next one (or the end) is read
    with stream:
        while chunk := stream.read(chunk_size):
            hasher.update(chunk)
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            if held is not None:
                yield held
            held, skip = chunk[skip:], 0
        actual = hasher.hexdigest()
    if actual != digest:
        on_corrupt(actual)
        raise CorruptObject(f"{what or f'stored object {digest}'} is corrupt in the object store: its bytes hash "
                            f"to sha256:{actual}", digest=digest, actual=actual)
    if held:
        yield held


def _primed(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Read up to the first chunk now, before a response starts: an object that fits in one
    chunk is then verified in full, and a corrupt one raises here (a clean error response)."""
    first = next(chunks, None)
    return chunks if first is None else itertools.chain([first], chunks)


def stored_chunks(ctx: ServiceContext, hex_digest: str, *, found_by: str, what: str,
                  skip: int = 0) -> Iterator[bytes]:
    """The verified bytes of a stored object (from byte `skip`), for a StreamingResponse.

    `found_by` labels the corrupt-object counter (what was being read); `what` names the object
    in a 502 (e.g. "file 'model.neff' of artifact <key> (sha256:...)"), when it is corrupt or not
    in the store at all. Reading has begun when this returns: call it before building the response."""
    stream = ctx.store.open(hex_digest)
    if stream is None:
        raise CorruptObject(f"{what} is missing from the object store")

    def corrupt(actual: str) -> None:
        ctx.metrics.corrupt_object(found_by)
        log.error("stored object sha256:%s is corrupt (it hashes to sha256:%s), found reading a %s; the "
                  "transfer was cut. Re-uploading the right bytes repairs it; `neffcache-admin scrub` finds others",
                  hex_digest, actual, found_by.replace("_", " "))

    return _primed(verified_chunks(stream, hex_digest, corrupt, skip=skip, what=what))


def object_response(ctx: ServiceContext, hex_digest: str, name: str, size: int, *, found_by: str,
                    what: str) -> Response:
    """A stored object for download: a 307 to a presigned URL where the store can sign one
    (S3; the digest in X-Neffcache-Sha256 for the client to check), else the bytes, streamed and
    verified. `what` names the object in a 502 (corrupt, or gone from the store)."""
    headers = {"X-Neffcache-Sha256": hex_digest, "X-Neffcache-Size": str(size)}
    url = ctx.store.presigned_url(hex_digest, ctx.settings.presign_expiry_s, filename=name)
    if url is not None:
        return RedirectResponse(url, status_code=307, headers=headers)
    chunks = stored_chunks(ctx, hex_digest, found_by=found_by, what=what)
    headers.update({"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{name}"'})
    return StreamingResponse(chunks, media_type="application/octet-stream", headers=headers)
