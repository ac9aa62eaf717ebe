"""What a response body that stops before its end means, for every download the client makes
(artifact files, blobs, job logs): one decision, shared by client.api and client.download."""

from __future__ import annotations

from typing import Any

import httpx

from neffcache.errors import IntegrityFailure, NeffcacheError, Unreachable

# The header with which the service vouches for the bytes it streams itself (service/streaming.py).
VOUCHED_SHA256 = "x-neffcache-sha256"


def ended_early(exc: httpx.TransportError, response: httpx.Response, *, what: str, received: int,
                size: int | None, outcome: str = "", **extra: Any) -> NeffcacheError:
    """The service, streaming a stored object itself (a blob, an artifact file, a job's stored
    log), verifies it as it goes and holds its last chunk back until the bytes hash to their
    digest; when they do not, it ends the body early instead (service/streaming.py). So a body
    the service vouched for (it named the digest, X-Neffcache-Sha256) that ends early is an
    integrity failure (exit 5). Any other stop (a timeout, a download from the object store cut
    off) is the service or the store being unavailable (exit 6). `what` names the object,
    `received` and `size` the bytes that arrived and were due, `outcome` what the caller did
    about it ("not written")."""
    of = f" of {size}" if size is not None else ""
    then = f"; {outcome}" if outcome else ""
    digest = response.headers.get(VOUCHED_SHA256)
    if digest and isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return IntegrityFailure(
            f"{what}: the service ended the transfer after {received}{of} bytes, as it does when the stored "
            f"object does not hash to its sha256 {digest}: the stored copy is most likely corrupt{then}",
            received=received, **extra,
        )
    reason = " ".join((str(exc) or type(exc).__name__).split())
    return Unreachable(f"{what}: the download from {response.url.host} stopped after {received}{of} bytes "
                       f"({reason}){then}")


def log_body_size(response: httpx.Response, offset: int | None) -> int | None:
    """The bytes a job log's body was to hold: its Content-Length, else (a stored log, streamed)
    the log's size (X-Neffcache-Log-Size) from `offset` on; None when neither says."""
    try:
        if "content-length" in response.headers:
            return int(response.headers["content-length"])
        return max(int(response.headers["x-neffcache-log-size"]) - (offset or 0), 0)
    except (KeyError, ValueError):
        return None
