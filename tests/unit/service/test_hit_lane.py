"""The hit lane (service.hit_lane) in process: it answers a warm hit with the bytes the route
gives, and leaves everything else, every refusal included, to the routes, with the request
body whole."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from neffcache import tokens
from neffcache.db.models import utcnow
from neffcache.service.auth import Grant
from neffcache.service.hit_lane import MAX_REMEMBERED_BODY
from tests.unit.service.conftest import SPEC, HitPath

BODY = json.dumps({"spec": SPEC}).encode()


def _without_counts(body: dict[str, Any]) -> dict[str, Any]:
    artifact = body.get("artifact", body)
    return {**body, "artifact": {k: v for k, v in artifact.items() if k not in ("lookup_hits", "hits")}}


def _send(hit_path: HitPath, method: str, path: str, content: Any = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    r = hit_path.client.request(method, path, content=content,
                                headers={"Content-Type": "application/json", **(headers or {})})
    return r.status_code, r.json()


def _token(hit_path: HitPath, scope: str, namespaces: list[str], expires_in: timedelta | None = None) -> str:
    with hit_path.ctx.db.session() as session:
        return tokens.create_token(session, f"t-{scope}-{len(hit_path.statements)}-{namespaces[0]}", scope,
                                   expires_in=expires_in, namespaces=namespaces)


@pytest.mark.parametrize(("kind", "path"), [("lookup", "/v1/lookup"), ("compile", "/v1/compile")])
def test_the_lane_answers_a_remembered_body_as_the_route_did(hit_path: HitPath, kind: str, path: str) -> None:
    assert _send(hit_path, "POST", path, BODY)[0] == 200  # cold: the database path
    status, by_route = _send(hit_path, "POST", path, BODY)  # warm: the route, from memory; remembered
    assert status == 200 and hit_path.served(kind, "memory") == 1 and hit_path.served(kind, "lane") == 0
    status, by_lane = _send(hit_path, "POST", path, BODY)
    assert status == 200 and hit_path.served(kind, "lane") == 1 and hit_path.served(kind, "memory") == 1
    assert _without_counts(by_lane) == _without_counts(by_route)
    # Each answer counts the request it answers, whichever answered it.
    assert by_lane["artifact"]["lookup_hits"] == by_route["artifact"]["lookup_hits"] + 1


def test_the_lane_answers_a_warm_artifact_as_the_route_did(hit_path: HitPath) -> None:
    path = f"/v1/artifacts/{hit_path.key}"
    status, by_route = _send(hit_path, "GET", path)
    assert status == 200 and hit_path.served("artifact", "database") == 1
    status, by_lane = _send(hit_path, "GET", path)
    assert status == 200 and hit_path.served("artifact", "lane") == 1
    assert by_lane == by_route


@pytest.fixture
def warm(hit_path: HitPath) -> Iterator[HitPath]:
    """The lookup body remembered by the lane and the artifact in memory."""
    for _ in range(2):
        assert _send(hit_path, "POST", "/v1/lookup", BODY)[0] == 200
    assert _send(hit_path, "GET", f"/v1/artifacts/{hit_path.key}")[0] == 200
    yield hit_path


def _expired(hit_path: HitPath) -> str:
    """A token whose grant is in memory, expired since."""
    token = _token(hit_path, "write", ["team-a"], expires_in=timedelta(hours=1))
    grant = Grant(f"expired-{len(hit_path.statements)}", "write", ("team-a",))
    hit_path.ctx.grants.put(tokens.hash_token(token), (grant, utcnow() - timedelta(seconds=1)))
    return token


# Each refusal is the route's own: status, code and the field or value its detail names.
REFUSALS: list[tuple[str, str, str, Any, int, str, str]] = [
    # (case, method, path, token maker, status, code, in detail)
    ("another namespace", "POST", "/v1/lookup", lambda h: _token(h, "read", ["team-b"]), 403, "forbidden", "'team-a'"),
    ("read scope compiling", "POST", "/v1/compile", lambda h: _token(h, "read", ["team-a"]), 403, "forbidden",
     "'write'"),
    ("expired token", "POST", "/v1/lookup", _expired, 401, "unauthorized", "expired"),
    ("unknown token", "POST", "/v1/lookup", lambda h: "nc_" + "0" * 40, 401, "unauthorized", "unknown"),
    ("no token", "POST", "/v1/lookup", lambda h: None, 401, "unauthorized", "bearer token"),
    ("artifact of another namespace", "GET", "/v1/artifacts/{key}", lambda h: _token(h, "read", ["team-b"]), 403,
     "forbidden", "'team-a'"),
    ("artifact, expired token", "GET", "/v1/artifacts/{key}", _expired, 401, "unauthorized", "expired"),
]


@pytest.mark.parametrize(("case", "method", "path", "token", "status", "code", "detail"), REFUSALS,
                         ids=[r[0] for r in REFUSALS])
def test_refusals_are_the_routes(warm: HitPath, case: str, method: str, path: str, token: Any, status: int,
                                 code: str, detail: str) -> None:
    value = token(warm)
    lane_before = warm.served("lookup", "lane") + warm.served("artifact", "lane")
    headers = {"Authorization": f"Bearer {value}" if value else ""}
    r = warm.client.request(method, path.format(key=warm.key), content=BODY if method == "POST" else None,
                            headers={"Content-Type": "application/json", **headers})
    body = r.json()
    assert (r.status_code, body["error"]) == (status, code), body
    assert detail in body["detail"], body
    assert warm.served("lookup", "lane") + warm.served("artifact", "lane") == lane_before


@pytest.mark.parametrize(("case", "content"), [
    ("the same spec written differently", json.dumps({"spec": SPEC}, indent=1).encode()),
    ("a body larger than the lane reads", BODY[:-1] + b" " * (MAX_REMEMBERED_BODY + 1) + b"}"),
    ("a body in chunks the lane has not seen", [BODY[:10], b" ", BODY[10:]]),
])
def test_a_body_the_lane_does_not_know_reaches_the_route_whole(warm: HitPath, case: str, content: Any) -> None:
    status, body = _asgi_post(warm, "/v1/lookup", content if isinstance(content, list) else [content])
    assert status == 200 and body["key"] == warm.key
    assert warm.served("lookup", "lane") == 0 and warm.served("lookup", "memory") == 2


def test_a_remembered_body_in_chunks_is_answered_by_the_lane(warm: HitPath) -> None:
    status, body = _asgi_post(warm, "/v1/lookup", [BODY[:7], BODY[7:20], BODY[20:]])
    assert status == 200 and body["key"] == warm.key and warm.served("lookup", "lane") == 1


def _asgi_post(hit_path: HitPath, path: str, chunks: list[bytes]) -> tuple[int, dict[str, Any]]:
    """POST `chunks` as separate ASGI messages (the test client joins them into one)."""
    headers = [(b"authorization", hit_path.client.headers["Authorization"].encode()),
               (b"content-type", b"application/json"), (b"content-length", str(sum(map(len, chunks))).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(hit_path.client.app(scope, receive, send))
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def test_a_malformed_body_is_refused_by_the_route(warm: HitPath) -> None:
    status, body = _send(warm, "POST", "/v1/lookup", BODY[:-2])
    assert status == 400 and body["error"] == "malformed_json", body
