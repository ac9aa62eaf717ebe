"""A small Python client for the neffcache HTTP API: one method per endpoint.

    from neffcache.client.api import NeffcacheClient

    with NeffcacheClient("http://neffcache:8080", token="...") as nc:
        outcome = nc.compile(spec)               # {"status": "hit"|"queued"|"failed", "key", ...}
        artifact = nc.lookup(spec)["artifact"]   # raises NotFound (with .extra["nearest"]) on a miss

Every refusal of the service is raised as the neffcache.errors exception its body names
(NotFound, InvalidSpec, Unauthorized, ...); a service that cannot be reached, or does not
answer in time, is raised as Unreachable, and so is a web server that is not neffcache (every
answer of the service carries X-Neffcache-Version). Nothing here prints.
"""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from neffcache import errors
from neffcache.client.answers import PROXY_STATUSES, error_from, our_error_body, transport_error
from neffcache.client.transfer_errors import VOUCHED_SHA256, ended_early, log_body_size
from neffcache.errors import NeffcacheError, Unreachable, UsageError

CHUNK_BYTES = 1024 * 1024
USER_AGENT = "neffcache-client/0.1.0"

SERVICE_HEADER = "x-neffcache-version"  # on every answer of the service
# "true" on a job's log once it is the stored log (which also carries its digest, VOUCHED_SHA256).
LOG_COMPLETE = "x-neffcache-log-complete"
API_PREFIX = "/v1"



def service_url(url: str) -> str:
    """The service's base URL as given, without a trailing / or the API's /v1 (which the client adds)."""
    url = url.strip().rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)].rstrip("/")
    return url


@dataclass(frozen=True)
class LogChunk:
    text: str
    end: int  # the offset to ask for next
    skipped: int  # bytes after the asked offset the service no longer had (a running log's tail moved on)
    complete: bool  # the attempt's whole log, final


class NeffcacheClient:
    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 60.0,
                 max_connections: int = 16) -> None:
        url = service_url(url)
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"service URL {url!r} must start with http:// or https:// (NEFFCACHE_URL or --url)")
        self.url = url
        headers = {"User-Agent": USER_AGENT}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, limits=limits,
                                  follow_redirects=False, verify=_tls_context())
        # Presigned object-store URLs carry their own signature: never send them our token.
        self._plain = httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=timeout, limits=limits,
                                   follow_redirects=True, verify=_tls_context())
        self.timeout_s = timeout_s
        self.answered = False  # a neffcache service has answered (True once one response was vetted)

    # --- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()
        self._plain.close()

    def __enter__(self) -> NeffcacheClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _unanswered(self, exc: Exception, what: str, where: str | None = None) -> NeffcacheError:
        return transport_error(exc, what, where or self.url, self.timeout_s)

    def _vet(self, response: httpx.Response, what: str) -> None:
        """Raise Unreachable ("no neffcache service at URL") unless `response` came from neffcache:
        it carries X-Neffcache-Version, or it is our error body. An older service sends no header:
        then its OpenAPI document, titled neffcache, vouches for it (asked once)."""
        if self.answered:
            return
        if response.status_code >= 400:
            response.read()  # a streamed error's body, read here rather than by error_from
        if SERVICE_HEADER in response.headers or our_error_body(response):
            self.answered = True
            return
        if response.status_code in PROXY_STATUSES:
            return  # a gateway or auth proxy's own answer: error_from words it by its status
        if self._openapi_title() == "neffcache":
            self.answered = True
            return
        kind = response.headers.get("content-type", "").split(";")[0].strip()
        raise Unreachable(f"no neffcache service at {self.url} ({what} answered HTTP {response.status_code}"
                          + (f", {kind})" if kind else ")"))

    def _openapi_title(self) -> str | None:
        try:
            response = self._http.get("/openapi.json")
        except httpx.HTTPError as exc:
            raise self._unanswered(exc, "GET /openapi.json") from None
        try:
            info = response.json().get("info") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            return None
        return info.get("title") if isinstance(info, dict) else None

    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        what = f"{method} {path}"
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unanswered(exc, what) from None
        self._vet(response, what)
        if response.status_code not in ok:
            raise error_from(response, what)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise errors.NeffcacheError(f"{method} {path}: the service answered something that is not JSON") from None
        return body

    # --- blobs ---------------------------------------------------------------------------------
    def blob_size(self, digest: str) -> int | None:
        """The stored size of a blob, or None when the service does not have it."""
        response = self.request("HEAD", f"/v1/blobs/{digest}", ok=(200, 404))
        if response.status_code == 404:
            return None
        return int(response.headers.get("content-length", "0"))

    def upload_blob(self, digest: str, path: Path,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """PUT a file as blob `digest`; `progress(n)` is called with each chunk's size."""
        size = os.path.getsize(path)

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    if progress:
                        progress(len(chunk))
                    yield chunk

        # With Content-Length set, httpx sends the iterator without chunked encoding.
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        return self._json("PUT", f"/v1/blobs/{digest}", content=chunks(), headers=headers, ok=(200, 201))

    # --- the cache -----------------------------------------------------------------------------
    def compile(self, spec: dict[str, Any], force: bool = False,
                annotations: dict[str, str] | None = None) -> dict[str, Any]:
        """{"status": "hit"|"queued"|"failed", "key", "spec", "artifact"|"job", ["deduplicated"]}.
        Annotations (not part of the key) are kept with the job and the artifact it publishes."""
        body: dict[str, Any] = {"spec": spec, "force": force}
        if annotations:
            body["annotations"] = annotations
        return self._json("POST", "/v1/compile", json=body, ok=(200, 202))

    def lookup(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The hit ({"status": "hit", "key", "spec", "artifact"}); NotFound with key and nearest on a miss."""
        return self._json("POST", "/v1/lookup", json={"spec": spec})

    def prewarm(self, compiler_version: str, runtime_version: str | None = None, *, keys: list[str] | None = None,
                specs: list[dict[str, Any]] | None = None, top: dict[str, Any] | None = None,
                submit: bool = True) -> dict[str, Any]:
        """Re-key one source (artifact `keys`, `specs` [{"name", "spec"}], or `top` {"n", "since_days"})
        for a new toolchain and submit each (or, `submit` false, only report readiness):
        {"entries": [{"source_key"|"spec", "key", "status", ...}], "totals": {status: n}, ...}."""
        body: dict[str, Any] = {"compiler_version": compiler_version, "runtime_version": runtime_version,
                                "submit": submit}
        body.update({name: value for name, value in (("keys", keys), ("specs", specs), ("top", top))
                     if value is not None})
        return self._json("POST", "/v1/prewarm", json=body)

    def artifact(self, key: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/artifacts/{key}")

    def artifacts(self, *, model: str | None = None, target: str | None = None, compiler: str | None = None,
                  limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        params = _params(model=model, target=target, compiler=compiler, limit=limit, cursor=cursor)
        return self._json("GET", "/v1/artifacts", params=params)

    @contextmanager
    def open_file(self, key: str, name: str) -> Iterator[tuple[httpx.Response, str | None]]:
        """Stream one artifact file: yields (response, the sha256 the service announced).

        The service answers with the bytes or a redirect to a presigned URL; the redirect is
        followed without our Authorization header.
        """
        with self._open_stream(f"/v1/artifacts/{key}/files/{name}", name, f"{name} of {key}") as opened:
            yield opened

    @contextmanager
    def open_blob(self, digest: str, name: str | None = None) -> Iterator[tuple[httpx.Response, str | None]]:
        """Stream a blob (a model graph) by digest, like open_file."""
        with self._open_stream(f"/v1/blobs/{digest}", name or digest, f"blob {digest}") as opened:
            yield opened

    @contextmanager
    def _open_stream(self, path: str, name: str, what_object: str) -> Iterator[tuple[httpx.Response, str | None]]:
        what = f"GET {path}"
        try:
            first = self._http.send(self._http.build_request("GET", path), stream=True)
        except httpx.HTTPError as exc:
            raise self._unanswered(exc, what) from None
        try:
            self._vet(first, what)
            announced = first.headers.get(VOUCHED_SHA256)
            if first.status_code in (301, 302, 303, 307, 308):
                location = first.headers.get("location")
                if not location:
                    raise errors.NeffcacheError(f"{what}: redirect without a Location")
                location = str(first.url.join(location))
                first.close()
                try:
                    second = self._plain.send(self._plain.build_request("GET", location), stream=True)
                except httpx.HTTPError as exc:
                    host = httpx.URL(location).host
                    raise self._unanswered(exc, f"download of {name}", f"the object store ({host})") from None
                try:
                    if second.status_code != 200:
                        second.read()
                        raise errors.StorageError(
                            f"the object store refused the download of {what_object}: HTTP {second.status_code}"
                        )
                    yield second, announced
                finally:
                    second.close()
                return
            if first.status_code != 200:
                first.read()
                raise error_from(first, what)
            yield first, announced
        finally:
            first.close()

    def publish(self, spec: dict[str, Any], files: list[dict[str, str]], *, annotations: dict[str, str] | None = None,
                compile_seconds: float = 0.0) -> dict[str, Any]:
        """Publish files compiled elsewhere (uploaded blobs) under the spec's key:
        {"status": "published"|"exists", "key", "artifact", ...}; ArtifactExists (with .extra["published"])
        when the key is published with other files."""
        body = {"spec": spec, "files": files, "annotations": annotations or {}, "compile_seconds": compile_seconds}
        return self._json("POST", "/v1/artifacts", json=body, ok=(200, 201))

    # --- jobs ----------------------------------------------------------------------------------
    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, *, state: str | None = None, limit: int = 50, cursor: str | None = None) -> dict[str, Any]:
        return self._json("GET", "/v1/jobs", params=_params(state=state, limit=limit, cursor=cursor))

    def job_log(self, job_id: str) -> str:
        return self._log(job_id).text

    def job_log_from(self, job_id: str, offset: int) -> LogChunk:
        """The job's log from byte `offset`: what is there now (a running job's is its tail)."""
        response = self._log(job_id, offset)
        headers = response.headers
        return LogChunk(
            text=response.text,
            end=offset + int(headers.get("x-neffcache-log-skipped", "0")) + len(response.content),
            skipped=int(headers.get("x-neffcache-log-skipped", "0")),
            complete=headers.get(LOG_COMPLETE) == "true",
        )

    def _log(self, job_id: str, offset: int | None = None) -> httpx.Response:
        """GET a job's log, read whole. A stored log the service streams itself, verified, and
        ends early when it is corrupt (or answers 502 corrupt_object, when it fits in one chunk):
        such a cut body is an IntegrityFailure, as a download's is (`ended_early`)."""
        path = f"/v1/jobs/{job_id}/log"
        what = f"GET {path}"
        params = {"offset": offset} if offset is not None else None
        try:
            response = self._http.send(self._http.build_request("GET", path, params=params), stream=True)
        except httpx.HTTPError as exc:
            raise self._unanswered(exc, what) from None
        try:
            self._vet(response, what)
            if response.status_code != 200:
                response.read()
                raise error_from(response, what)
            try:
                response.read()
            except httpx.TransportError as exc:
                raise ended_early(exc, response, what=f"the log of job {job_id}",
                                  received=response.num_bytes_downloaded, size=log_body_size(response, offset),
                                  job=job_id) from None
        finally:
            response.close()
        return response

    def cancel_job(self, job_id: str) -> tuple[dict[str, Any], bool]:
        """(the job, True if it was cancelled at once / False if its worker was asked to stop)."""
        response = self.request("POST", f"/v1/jobs/{job_id}/cancel", ok=(200, 202))
        return response.json(), response.status_code == 200

    # --- pins ----------------------------------------------------------------------------------
    def put_pin(self, name: str, keys: list[str], *, expires_in: str | None = None,
                note: str | None = None) -> dict[str, Any]:
        """Pin the artifacts of `keys` (whole keys or unique prefixes) under `name`, replacing the
        pin of that name: the pin, with its entries."""
        body = {"keys": keys, **_params(expires_in=expires_in, note=note)}
        return self._json("PUT", f"/v1/pins/{_segment(name)}", json=body)

    def pins(self) -> dict[str, Any]:
        """{"pins": [...]}: every pin, without its entries."""
        return self._json("GET", "/v1/pins")

    def pin(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/pins/{_segment(name)}")

    def remove_pin(self, name: str) -> dict[str, Any]:
        """Remove the pin `name`: the pin as it was."""
        return self._json("DELETE", f"/v1/pins/{_segment(name)}")

    # --- inspection ----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        return self._json("GET", "/v1/stats")

    def storage(self) -> dict[str, Any]:
        """Stored and pinned bytes against the quotas, and the last GC pass (GET /v1/storage)."""
        return self._json("GET", "/v1/storage")

    def hits(self, key: str | None = None, limit: int = 50, caller: str | None = None) -> dict[str, Any]:
        return self._json("GET", "/v1/hits", params=_params(key=key, caller=caller, limit=limit))

    def workers(self) -> dict[str, Any]:
        return self._json("GET", "/v1/workers")

    def toolchains(self) -> dict[str, Any]:
        """{"releases": [{"sdk", "neuronx_cc", "runtime", "instances", "live_workers", "artifacts", "bytes",
        "lookup_hits", "lookup_hits_share"}], "live": [...], "serving": [...]} (the toolchains serving artifacts)."""
        return self._json("GET", "/v1/toolchains")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """The TLS settings httpx makes by default (certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR), made
    once per process: each client would load the CA bundle again (20 ms each, at every start-up)."""
    return httpx.create_ssl_context()


def _segment(name: str) -> str:
    """`name` as one path segment (the service refuses a name that needs quoting, naming it)."""
    return quote(name, safe="")


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}
