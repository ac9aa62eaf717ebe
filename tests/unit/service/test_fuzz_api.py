"""The whole HTTP API, in process on the session's database (Postgres in CI, SQLite under
`make test`): no request gets a 5xx, and every answer is one the OpenAPI document describes (its
status is listed for the route; an error is an ErrorBody whose code is listed for that status;
the content type is the documented one).

Two ways: a property test (hypothesis) drives every route with arbitrary path ids, query
strings, tokens and bodies (valid bodies mutated, arbitrary JSON, bytes); and, where sampling
could miss it, every text parameter and every string of each body is sent with each kind of bad
text in it (NUL, lone surrogates, control characters) and every kind of forged cursor.

The database holds what the routes look for (blobs, an artifact published through the API,
artifacts and jobs whose keys and ids share prefixes, a job with a stored log), so generated ids
hit, miss and collide; and a request may carry no token, a wrong one, or one of each scope.
Compile requests enqueue their jobs on the session's Redis, in queues of this module's own
prefix that no worker serves. Everything it adds to the shared database and Redis is removed at
the end.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import delete

from neffcache import errors, tokens
from neffcache.db.models import ApiToken, Artifact, ArtifactFile, Blob, CacheEvent, Job, Pin, utcnow
from neffcache.lifecycle import JobState
from neffcache.service.app import create_app
from neffcache.service.pagination import encode_cursor
from neffcache.settings import Settings
from tests.support.api import SAMPLE_MANIFEST, digest_of, key_with_prefix
from tests.support.in_process import service_settings
from tests.support.rq_keys import delete_run_keys, run_leftovers

# Per route; the file takes about half a minute. NEFFCACHE_FUZZ_EXAMPLES asks for more (e.g. 2000
# for a long hunt: 700 a route found nothing more on either database).
EXAMPLES_PER_ROUTE = int(os.environ.get("NEFFCACHE_FUZZ_EXAMPLES", "100"))
HEX = "0123456789abcdef"
# Anything a URL can carry (a lone surrogate cannot be encoded into one); with the characters
# that matter most to a database, a router and a parser over-represented.
URL_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.text(st.sampled_from("\x00\n\r\t %/\\?#.-_:=+'\"" + HEX + "ABCDEF"), max_size=24),
)
# Anything JSON can carry, lone surrogates (as "\ud800" escapes), NaN and Infinity included.
JSON_TEXT = st.one_of(st.text(max_size=30), st.sampled_from(["\x00", "a\x00", "\ud800", "a=\udfff", "", " "]))
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), JSON_TEXT),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_TEXT, inner, max_size=4),
    max_leaves=8,
)


@dataclass
class Seeded:
    """What the fuzzed requests look for, and the tokens they may carry."""

    prefix: str
    tokens: dict[str, str]
    model_digest: str
    package_digest: str
    key: str
    keys: list[str]
    job_ids: list[str]
    blobs: list[str] = field(default_factory=list)
    published: list[str] = field(default_factory=list)  # artifacts the fuzzed requests published


@pytest.fixture(scope="module")
def api(database_url: str, redis_url: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Seeded]]:
    run = uuid.uuid4().hex
    root = tmp_path_factory.mktemp("fuzz")
    settings_ = service_settings(root, database_url=database_url, auth_required=True, redis_url=redis_url,
                                 queue_prefix=f"neffcache-fuzz-{run[:10]}")
    app = create_app(settings_)
    db = app.state.ctx.db
    names = {scope: f"fuzz-{scope}-{run[:8]}" for scope in tokens.SCOPES}
    with db.session() as session:
        made = {scope: tokens.create_token(session, name, scope) for scope, name in names.items()}
    with TestClient(app, raise_server_exceptions=False) as client:
        admin = {"Authorization": f"Bearer {made['admin']}"}
        blobs = []
        for data in (b"fuzz model " + run.encode(), b"fuzz package " + run.encode(), b"fuzz log\n" * 3 + run.encode()):
            blobs.append(digest_of(data))
            assert client.put(f"/v1/blobs/{blobs[-1]}", content=data, headers=admin).status_code == 201
        model, package, log = blobs
        published = client.post("/v1/artifacts", headers=admin, json={
            "spec": _inductor_spec(model), "files": [{"name": "model.pt2", "digest": package}]})
        assert published.status_code == 201, published.text
        prefix = run[:8]
        keys = [key_with_prefix(prefix, fill) for fill in "ab"]
        job_ids = [f"{prefix}-0000-4000-8000-00000000000{n}" for n in range(3)]
        with db.session() as session:
            for key in keys:
                session.add(Artifact.from_manifest(
                    key, SAMPLE_MANIFEST, [ArtifactFile(name="model.neff", digest=package, size=1, neff=None)],
                    compile_seconds=1.0, job_id=None, annotations=None))
            common = {"manifest": SAMPLE_MANIFEST, "queue": settings_.queue_prefix, "max_attempts": 1,
                      "cancel_requested": False, "created_at": utcnow()}
            # No running job: the workers of a stack the session runs would take it for lost.
            session.add(Job(id=job_ids[0], key=key_with_prefix(prefix, "0"), state=JobState.QUEUED, attempts=0,
                            **common))
            session.add(Job(id=job_ids[1], key=key_with_prefix(prefix, "1"), state=JobState.CANCELLED, attempts=1,
                            log_tail="compiling\n", log_bytes=10, **common))
            session.add(Job(id=job_ids[2], key=key_with_prefix(prefix, "2"), state=JobState.SUCCEEDED, attempts=1,
                            log_digest=log, log_bytes=30, **common))
        seeded = Seeded(prefix, made, model, package, published.json()["key"], keys, job_ids, blobs)
        try:
            yield client, seeded
        finally:
            _forget(app, seeded, names)


def _forget(app: Any, seeded: Seeded, names: dict[str, str]) -> None:
    """Remove from the shared database and Redis everything this module added (its jobs went to
    queues of its own prefix)."""
    queue_prefix = app.state.ctx.settings.queue_prefix
    redis = app.state.ctx.redis
    delete_run_keys(redis, queue_prefix)
    assert run_leftovers(redis, queue_prefix) == ([], [])
    with app.state.ctx.db.session() as session:
        mine = [*seeded.keys, seeded.key, *seeded.published]
        session.execute(delete(Job).where(Job.queue.startswith(queue_prefix)))
        session.execute(delete(CacheEvent).where(CacheEvent.caller.in_(names.values())))
        session.execute(delete(ArtifactFile).where(ArtifactFile.artifact_key.in_(mine)))
        session.execute(delete(Artifact).where(Artifact.key.in_(mine)))
        session.execute(delete(Blob).where(Blob.digest.in_(seeded.blobs)))
        session.execute(delete(Pin).where(Pin.owner.in_(names.values())))
        session.execute(delete(ApiToken).where(ApiToken.name.in_(names.values())))


def _inductor_spec(model: str) -> dict[str, Any]:
    return {"model": {"format": "torch-export", "digest": model},
            "inputs": [{"name": "x", "shape": [2, 4], "dtype": "float32"}], "target": "cpu",
            "compiler": {"name": "inductor", "version": "2.13.0+cpu", "flags": ["cpp.march=x86-64-v3"]}}


def _other_spec(model: str) -> dict[str, Any]:
    """Not the published one: a compile of it makes a job, a publish of it an artifact."""
    spec = _inductor_spec(model)
    return {**spec, "compiler": {**spec["compiler"], "flags": ["cpp.march=x86-64-v3", "max_autotune=True"]},
            "namespace": "fuzz"}


# --- what goes into a request ------------------------------------------------------------------
def _ids(full: list[str]) -> st.SearchStrategy[str]:
    """A seeded id, a prefix of one, its upper case, one with something appended, or anything."""
    seeded = st.sampled_from(full)
    return st.one_of(
        seeded,
        st.builds(lambda v, n: v[:n], seeded, st.integers(0, 64)),
        seeded.map(str.upper),
        st.builds(lambda v, tail: v + tail, seeded, st.sampled_from(["\x00", "\n", " ", "%", "g", "-", "/x"])),
        st.text(HEX + "-", max_size=70),
        URL_TEXT,
    )


def _cursors() -> st.SearchStrategy[str]:
    zones = st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12)), None])
    when = st.builds(lambda d, tz: d.replace(tzinfo=tz), st.datetimes(), zones)
    ident = st.one_of(st.uuids().map(str), st.text(HEX, min_size=64, max_size=64), URL_TEXT)
    made = st.builds(lambda d, i: base64.urlsafe_b64encode(f"{d.isoformat()}|{i}".encode()).decode(), when, ident)
    issued = st.builds(encode_cursor, st.datetimes(timezones=st.just(UTC)), st.uuids().map(str))
    return st.one_of(made, issued, URL_TEXT.map(lambda t: base64.urlsafe_b64encode(t.encode()).decode()), URL_TEXT)


def _numbers() -> st.SearchStrategy[str]:
    valid = st.integers(1, 500).map(str)  # mostly valid, so that the other parameters are reached
    return st.one_of(valid, valid, st.integers(-5, 600).map(str), st.integers(10**15, 10**40).map(str), URL_TEXT)


def parameter_values(s: Seeded) -> dict[str, st.SearchStrategy[str]]:
    """A strategy for every parameter name the API has (test_every_parameter_has_a_strategy)."""
    digests = [s.model_digest, s.package_digest, "sha256:" + "0" * 64]
    words = ["cpu", "trn2", "inductor", "inductor==2.13.0+cpu", "2.13.0+cpu", f"fuzz-admin-{s.prefix}", ""]
    return {
        "job_id": _ids(s.job_ids),
        "key": _ids([*s.keys, s.key]),
        "digest": st.one_of(_ids(digests), st.text(HEX, max_size=70).map(lambda h: "sha256:" + h)),
        "name": st.one_of(st.sampled_from(["model.pt2", "model.neff", "compile.log", "..", "."]), URL_TEXT),
        "cursor": _cursors(),
        "limit": _numbers(),
        "offset": _numbers(),
        "state": st.one_of(st.sampled_from([str(v) for v in JobState]), st.sampled_from([str(v) for v in JobState]),
                           URL_TEXT),
        "model": st.one_of(_ids(digests), URL_TEXT),
        "target": st.one_of(st.sampled_from(words), URL_TEXT),
        "compiler": st.one_of(st.sampled_from(words), URL_TEXT),
        "caller": st.one_of(st.sampled_from(words), URL_TEXT),
        "namespace": st.one_of(st.sampled_from(["default", "team-a", "*", "", "Team"]), URL_TEXT),
        "origin": st.one_of(st.sampled_from(["farm", "pushed", "FARM", ""]), URL_TEXT),
    }


def _paths(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*at, i))


BAD_TEXT = ["\x00", "\ud800", "\udfff", "\n", "\x7f", "/..", "=\ud83d"]


def _at(body: Any, at: tuple[Any, ...]) -> Any:
    for part in at:
        body = body[part]
    return body


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> Any:
    """The valid body with one to three of its parts replaced, removed or joined by an unknown one."""
    body: Any = copy.deepcopy(valid)
    for _ in range(draw(st.integers(1, 3))):
        places = list(_paths(body))
        at = draw(st.sampled_from(places))
        value = draw(JSON_VALUES)
        here = _at(body, at)
        if isinstance(here, str) and draw(st.booleans()):  # the same text with something bad inside
            cut = draw(st.integers(0, len(here)))
            value = here[:cut] + draw(st.sampled_from(BAD_TEXT)) + here[cut:]
        elif isinstance(here, list) and here and isinstance(here[0], str) and draw(st.booleans()):
            value = [*here, here[0] + draw(st.sampled_from(BAD_TEXT))]
        if not at:
            body = value
            continue
        parent = body
        for part in at[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "remove", "extra"]))
        if action == "remove":
            del parent[at[-1]]
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(JSON_TEXT)] = value
        else:
            parent[at[-1]] = value
        if not isinstance(body, dict | list):
            break
    return body


def valid_bodies(s: Seeded) -> dict[tuple[str, str], dict[str, Any]]:
    """A body each JSON operation takes (one with every kind of string field in it)."""
    spec = _other_spec(s.model_digest)
    return {
        ("post", "/v1/compile"): {"spec": spec, "force": False, "annotations": {"note": "fuzz"}},
        ("post", "/v1/lookup"): {"spec": spec},
        ("post", "/v1/artifacts"): {"spec": spec, "files": [{"name": "model.pt2", "digest": s.package_digest}],
                                    "compile_seconds": 1.5, "annotations": {"neuron_cache.module": "MODULE_1"}},
        ("put", "/v1/pins/{name}"): {"keys": [s.key, s.keys[0]], "expires_in": "1d", "note": "fuzz"},
        ("post", "/v1/prewarm"): {"compiler_version": spec["compiler"].get("version") or "2.0.0", "keys": [s.key],
                                  "submit": False},
    }


def bodies(s: Seeded, method: str, path: str) -> st.SearchStrategy[tuple[bytes, dict[str, str]]] | None:
    """Request bodies (bytes, headers) for the operation, or None when it takes none."""
    valid = valid_bodies(s).get((method, path))
    json_type = {"content-type": "application/json"}
    if valid is not None:
        as_json = st.one_of(mutated(valid), mutated(valid), JSON_VALUES, st.just(valid)).map(
            lambda b: json.dumps(b).encode())
        raw = st.binary(max_size=64)
        return st.one_of(as_json, as_json, raw).flatmap(lambda b: st.sampled_from([json_type, {}]).map(
            lambda h: (b, h)))
    if path == "/v1/blobs/{digest}":  # sometimes bytes whose digest the path names
        return st.binary(max_size=64).map(lambda b: (b"fuzz:" + b, {}))
    return None


# --- the property ------------------------------------------------------------------------------
def _document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def _operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    return sorted((method, path) for path, item in document["paths"].items() for method in item)


def _operations_of_the_app() -> list[tuple[str, str]]:
    """Every operation the app's OpenAPI document has (building the app connects to nothing)."""
    with tempfile.TemporaryDirectory() as tmp:
        settings_ = Settings(database_url=f"sqlite:///{tmp}/none.db", storage_url=f"file://{tmp}/objects",
                             redis_url="redis://127.0.0.1:1/0")
        return _operations(create_app(settings_).openapi())


OPERATIONS = _operations_of_the_app()


def _encoded(value: str) -> str:
    # Every character but letters, digits, "_" and "~" percent-encoded (UTF-8): a generated "/" or
    # "." stays inside its path segment.
    return quote(value, safe="").replace(".", "%2E").replace("-", "%2D")


def send(client: TestClient, seeded: Seeded, method: str, url: str, **request: Any) -> Any:
    """The response to the request; an artifact it published is noted, to be removed at the end."""
    r = client.request(method, url, **request)
    if method == "post" and url == "/v1/artifacts" and r.status_code == 201:
        seeded.published.append(r.json()["key"])
    return r


def check_answer(document: dict[str, Any], method: str, path: str, r: Any) -> None:
    """The answer is not a server error, and is one the document describes."""
    where = f"{method.upper()} {path} -> {r.status_code}: {r.text[:300]}"
    assert r.status_code < 500, where
    assert r.headers.get("x-neffcache-version"), where
    documented = document["paths"][path][method]["responses"]
    assert str(r.status_code) in documented, f"undocumented status: {where}"
    response = documented[str(r.status_code)]
    content_types = list(response.get("content", {}))
    if method == "head" or not r.content:
        return
    received = r.headers.get("content-type", "").split(";")[0].strip()
    assert received in content_types, f"content type {received!r} is not one of {content_types}: {where}"
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), where
        codes = response["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"]["enum"]
        assert body["error"] in codes, f"code {body['error']!r} is not documented for {r.status_code}: {where}"
        assert errors.http_status(body["error"]) == r.status_code, where


@pytest.fixture(scope="module")
def document(api: tuple[TestClient, Seeded]) -> dict[str, Any]:
    return _document(api[0])


def test_every_operation_and_parameter_is_fuzzed(api: tuple[TestClient, Seeded], document: dict[str, Any]) -> None:
    client, seeded = api
    assert _operations(document) == OPERATIONS
    assert len(OPERATIONS) >= 21 and ("post", "/v1/compile") in OPERATIONS
    values = parameter_values(seeded)
    for method, path in OPERATIONS:
        operation = document["paths"][path][method]
        for parameter in operation.get("parameters", []):
            assert parameter["name"] in values, (method, path, parameter["name"])
        if "requestBody" in operation:
            assert bodies(seeded, method, path) is not None, (method, path)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_no_request_gets_a_server_error_and_every_answer_is_documented(
        api: tuple[TestClient, Seeded], document: dict[str, Any], method: str, path: str,
) -> None:
    client, seeded = api
    operation = document["paths"][path][method]
    values = parameter_values(seeded)
    auth = st.sampled_from([None, "Bearer nfc_not-a-token", "Basic Zm9vOmJhcg==", *[f"Bearer {seeded.tokens[s]}"
                            for s in ("read", "write", "admin", "admin", "admin")]])
    body_strategy = bodies(seeded, method, path)

    @given(data=st.data())
    @settings(max_examples=EXAMPLES_PER_ROUTE, deadline=None, suppress_health_check=[
        HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
    def check(data: st.DataObject) -> None:
        url = path
        query: list[tuple[str, str]] = []
        for parameter in operation.get("parameters", []):
            name = parameter["name"]
            if parameter["in"] == "path":
                url = url.replace("{" + name + "}", _encoded(data.draw(values[name], label=name)))
            elif data.draw(st.booleans(), label=f"send {name}"):
                query.append((name, data.draw(values[name], label=name)))
        headers = {}
        token = data.draw(auth, label="authorization")
        if token is not None:
            headers["Authorization"] = token
        content = None
        if body_strategy is not None:
            content, extra = data.draw(body_strategy, label="body")
            headers.update(extra)
            if path == "/v1/blobs/{digest}" and data.draw(st.booleans(), label="digest names the body"):
                url = "/v1/blobs/" + digest_of(content)
                seeded.blobs.append(digest_of(content))
        if query:
            url += "?" + "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in query)
        note(f"{method.upper()} {url} {headers} {content!r}")
        check_answer(document, method, path, send(client, seeded, method, url, content=content, headers=headers))

    check()


UNSUPPORTED = [("delete", "/v1/compile"), ("patch", "/v1/blobs/sha256:" + "0" * 64), ("put", "/v1/jobs"),
               ("post", "/metrics"), ("trace", "/v1/artifacts/abcdef12"), ("options", "/v1/stats")]


@pytest.mark.parametrize(("method", "url"), UNSUPPORTED)
def test_a_method_a_path_lacks_is_405_with_allow(api: tuple[TestClient, Seeded], document: dict[str, Any],
                                                  method: str, url: str) -> None:
    client, seeded = api
    r = client.request(method, url, headers={"Authorization": f"Bearer {seeded.tokens['admin']}"})
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")
    template = next(p for p in document["paths"] if _matches(p, url))
    assert r.headers["allow"] == ", ".join(sorted(m.upper() for m in document["paths"][template]))


def _matches(template: str, url: str) -> bool:
    parts, got = template.split("/"), url.split("/")
    return len(parts) == len(got) and all(p.startswith("{") or p == g for p, g in zip(parts, got, strict=True))


def test_the_seeded_database_is_reachable(api: tuple[TestClient, Seeded]) -> None:
    """The fuzzed ids can hit: each kind of seeded row answers 200, and the shared prefixes 409."""
    client, seeded = api
    auth = {"Authorization": f"Bearer {seeded.tokens['read']}"}
    assert client.get(f"/v1/artifacts/{seeded.key[:12]}", headers=auth).status_code == 200
    assert client.get(f"/v1/artifacts/{seeded.key}/files/model.pt2", headers=auth).status_code == 200
    assert client.get(f"/v1/artifacts/{seeded.prefix}", headers=auth).status_code == 409
    assert client.get(f"/v1/jobs/{seeded.prefix}", headers=auth).status_code == 409
    log = client.get(f"/v1/jobs/{seeded.job_ids[2]}/log", headers=auth)
    assert log.status_code == 200 and log.text.startswith("fuzz log")
    assert client.get(f"/v1/jobs/{seeded.job_ids[1]}/log", headers=auth).text == "compiling\n"


# --- every text the API takes, with each kind of bad text in it --------------------------------
# Exhaustive where the property test samples: each string of each body, each text parameter.
BAD_IN_URL = ["\x00", "a\x00b", "\n", "%", "\u00e9", "\U0001f600"]  # a URL cannot carry a lone surrogate
BAD_CURSORS = [
    base64.urlsafe_b64encode(text.encode()).decode() for text in (
        "2024-01-01T00:00:00|" + "0" * 8, "0001-01-01T00:00:00+14:00|" + "0" * 8, "9999-12-31T23:59:59-12:00|x",
        "2024-01-01T00:00:00+00:00|\x00", "2024-01-01T00:00:00+00:00|", "|", "x")
]


def _with(body: Any, at: tuple[Any, ...], value: Any) -> Any:
    body = copy.deepcopy(body)
    parent = _at(body, at[:-1])
    parent[at[-1]] = value
    return body


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m.upper()} {p}" for m, p in OPERATIONS])
def test_bad_text_anywhere_is_refused_not_a_server_error(api: tuple[TestClient, Seeded], document: dict[str, Any],
                                                         method: str, path: str) -> None:
    client, seeded = api
    admin = {"Authorization": f"Bearer {seeded.tokens['admin']}"}
    operation = document["paths"][path][method]
    valid = {"job_id": seeded.job_ids[0], "key": seeded.key, "digest": seeded.model_digest, "name": "model.pt2"}

    def url_with(**values: str) -> str:
        url = path
        for parameter in operation.get("parameters", []):
            if parameter["in"] == "path":
                name = parameter["name"]
                url = url.replace("{" + name + "}", _encoded(values.get(name, valid[name])))
        return url

    valid_path = url_with()
    sent = 0
    for parameter in operation.get("parameters", []):
        name = parameter["name"]
        for bad in BAD_CURSORS + BAD_IN_URL if name == "cursor" else BAD_IN_URL:
            if parameter["in"] == "path":
                url = url_with(**{name: bad})
            else:
                url = f"{valid_path}?{name}={_encoded(bad)}"
            check_answer(document, method, path, send(client, seeded, method, url, headers=admin))
            sent += 1
    body = valid_bodies(seeded).get((method, path))
    if body is not None:
        for at in _paths(body):
            here = _at(body, at)
            if not isinstance(here, str):
                continue
            for bad in ["\x00", "\ud800", "\udfff", "\ud83d\ude00", "\n", "\x7f"]:
                for value in (here + bad, bad + here, bad):
                    sent += 1
                    changed = _with(body, at, value)
                    # A key of its own: a job or an artifact is written (a pin's body has no spec).
                    if "spec" in changed and at != ("spec", "namespace"):
                        changed["spec"]["namespace"] = f"fuzz-{sent}"
                    content = json.dumps(changed).encode()
                    r = send(client, seeded, method, valid_path, content=content,
                             headers={**admin, "content-type": "application/json"})
                    check_answer(document, method, path, r)
        for at in _paths(body):  # bad text in the names and values of free-form text (annotations)
            here = _at(body, at)
            if isinstance(here, dict) and at and at[-1] == "annotations":
                for bad in ["\x00", "\ud800", "a\x00"]:
                    sent += 1
                    changed = _with(body, at, {**here, bad: "x"})
                    changed["spec"]["namespace"] = f"fuzz-{sent}"
                    for content in (json.dumps(changed).encode(),
                                    json.dumps(_with(changed, at, {**here, "ok": bad})).encode()):
                        r = send(client, seeded, method, valid_path, content=content,
                                 headers={**admin, "content-type": "application/json"})
                        check_answer(document, method, path, r)
    if operation.get("parameters") or body is not None:
        assert sent > 0
