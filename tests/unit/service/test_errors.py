"""service/errors.py in process: the real app (create_app with test settings, SQLite made by the
migrations, a folder store; nothing started) answers every error as {"error", "detail"}: a
validation error maps to the code of the field at fault, a domain error keeps its own status, and
anything unexpected is a 500 without a traceback."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from neffcache.errors import InvalidSpec
from neffcache.service.app import create_app
from neffcache.service.errors import error_response
from tests.support.in_process import service_settings

TOKEN = "nfc_test-errors-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECRET = "the-password-is-hunter2"  # in the unexpected exception's message: must not leak
VALID = {
    "spec": {
        "model": {"format": "hlo", "digest": "sha256:" + "ab" * 32},
        "inputs": [{"name": "x", "shape": [8, 64], "dtype": "float32"}],
        "target": "trn2",
        "compiler": {"name": "neuronx-cc", "version": "2.27.5334.0", "flags": ["-O2"]},
        "runtime": {"name": "neuron-runtime", "version": "2.34.10.0"},
    }
}


def _crash() -> None:
    raise RuntimeError(f"database password rejected: {SECRET}")


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root: Path = tmp_path_factory.mktemp("errors")
    settings = service_settings(root, auth_required=True, bootstrap_admin_token=TOKEN)
    app = create_app(settings)
    app.add_api_route("/v1/test-crash", _crash, methods=["GET"])
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


def _with(path: str, value: Any) -> dict[str, Any]:
    """The valid body with the field at `path` ("spec.inputs.0.dtype") set to `value` (or removed)."""
    body = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _REMOVE:
        del node[last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return body


_REMOVE = object()

# (field set to a bad value, the value, the code, the start of the detail)
FIELDS = [
    ("spec.target", "trn9", "unknown_target", "spec.target: "),
    ("spec.compiler.name", "neuron-cc", "unknown_compiler", "spec.compiler.name: "),
    ("spec.inputs.0.dtype", "float31", "invalid_dtype", "spec.inputs[0].dtype: "),
    ("spec.inputs.0.shape", [8, 0], "invalid_shape", "spec.inputs[0].shape: "),
    ("spec.inputs.0.shape", [], "invalid_shape", "spec.inputs[0].shape: "),
    ("spec.inputs.0.shape", "8x64", "invalid_shape", "spec.inputs[0].shape: "),
    ("spec.inputs.0.shape.1", "wide", "invalid_shape", "spec.inputs[0].shape[1]: "),
    ("spec.compiler.flags", ["-O2", ""], "invalid_flags", "spec.compiler.flags: "),
    ("spec.compiler.flags", "-O2", "invalid_flags", "spec.compiler.flags: "),
    ("spec.model.digest", "sha256:abc", "invalid_spec", "spec.model.digest: "),
    ("spec.model.format", "onnx", "invalid_spec", "spec.model.format: "),
    ("spec.inputs.0.name", "0bad name", "invalid_spec", "spec.inputs[0].name: "),
    ("spec.namespace", "Team A", "invalid_spec", "spec.namespace: "),
    ("spec.compiler.version", "2.27/../x", "invalid_spec", "spec.compiler.version: "),
    ("spec.runtime.name", "cuda-runtime", "invalid_spec", "spec.runtime.name: "),
    ("spec.targte", "trn2", "invalid_spec", "spec.targte: "),  # an unknown field
    ("spec.model", _REMOVE, "invalid_spec", "spec.model: "),
    ("spec.model.format", "torch-export", "invalid_spec", "spec: "),  # the spec as a whole is inconsistent
    ("force", "maybe", "invalid_spec", "force: "),
    ("annotations", {"Bad Key": "x"}, "invalid_spec", "annotations: "),
]


@pytest.mark.parametrize(("path", "value", "code", "detail"), FIELDS,
                         ids=[f"{f[0]}={f[1]!r}"[:60] for f in FIELDS])
def test_a_bad_field_is_422_with_its_code_and_name(client: TestClient, path: str, value: Any, code: str,
                                                    detail: str) -> None:
    r = client.post("/v1/compile", json=_with(path, value), headers=AUTH)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == code
    assert body["detail"].startswith(detail), body["detail"]
    assert "Traceback" not in r.text


@pytest.mark.parametrize(("value", "shown"), [("trn9", "'trn9'"), ("neuron-cc", "'neuron-cc'")])
def test_a_refused_choice_shows_what_was_given(client: TestClient, value: str, shown: str) -> None:
    field = "spec.target" if value.startswith("trn") else "spec.compiler.name"
    r = client.post("/v1/compile", json=_with(field, value), headers=AUTH)
    assert f"(got {shown})" in r.json()["detail"]


def test_several_problems_are_all_listed(client: TestClient) -> None:
    body = _with("spec.target", "trn9")
    body["spec"]["inputs"][0]["dtype"] = "float31"
    r = client.post("/v1/compile", json=body, headers=AUTH)
    assert r.status_code == 422
    problems = r.json()["problems"]
    assert len(problems) == 2
    assert any(p.startswith("spec.inputs[0].dtype: ") for p in problems)
    assert any(p.startswith("spec.target: ") for p in problems)


# (method, path, what is sent, status, code, words the detail holds)
REQUESTS = [
    ("POST", "/v1/compile", {"content": b'{"spec": ', "headers": {"content-type": "application/json"}},
     400, "malformed_json", "not valid JSON"),
    ("POST", "/v1/compile", {"json": ["not", "an", "object"]}, 422, "invalid_spec", "body: "),
    ("GET", "/v1/jobs?limit=0", {}, 400, "invalid_parameter", "limit: "),
    ("GET", "/v1/jobs?limit=many", {}, 400, "invalid_parameter", "limit: "),
    ("GET", "/v1/jobs?state=exploded", {}, 400, "invalid_parameter", "(got 'exploded')"),
    ("GET", "/v1/hits?limit=100000", {}, 400, "invalid_parameter", "limit: "),
    ("PUT", "/v1/blobs/sha256:NOTHEX", {"content": b"x"}, 400, "invalid_digest", "digest: 'sha256:NOTHEX'"),
    ("HEAD", f"/v1/blobs/{'ab' * 32}", {}, 400, None, None),  # HEAD has no body: the status alone
    ("GET", "/v1/no-such-route", {}, 404, "not_found", "Not Found"),
    # An empty id (a trailing slash) is a path the API lacks, not a redirect the document omits.
    ("GET", "/v1/jobs/", {}, 404, "not_found", "Not Found"),
    ("GET", "/v1/artifacts/", {}, 404, "not_found", "Not Found"),
    ("DELETE", "/v1/compile", {}, 405, "method_not_allowed", "Method Not Allowed"),
    # A body that is not even text: the framework's refusal, with the code of the table.
    ("POST", "/v1/compile", {"content": b'{"spec": "\xff\xfe"}', "headers": {"content-type": "application/json"}},
     400, "malformed_json", "not valid JSON: 'utf-8' codec can't decode"),
    # Text parameters follow one rule: no NUL (Postgres refuses it: it was a 500 there).
    ("GET", "/v1/artifacts?target=%00", {}, 400, "invalid_parameter", "target: "),
    ("GET", "/v1/artifacts?compiler=inductor%00", {}, 400, "invalid_parameter", "compiler: "),
    ("GET", "/v1/artifacts?model=%00", {}, 400, "invalid_parameter", "model: "),
    ("GET", "/v1/artifacts?model=sha256:" + "ab" * 32 + "%0A", {}, 400, "invalid_parameter", "model: "),
    ("GET", "/v1/hits?caller=%00", {}, 400, "invalid_parameter", "caller: "),
    ("GET", "/v1/hits?key=%00", {}, 400, "invalid_parameter", "key: "),
    # A cursor that decodes to a naive time, or to one out of range once in UTC (500s before).
    ("GET", "/v1/jobs?cursor=MjAyNC0wMS0wMVQwMDowMDowMHx4", {}, 400, "invalid_parameter", "cursor: "),
    ("GET", "/v1/artifacts?cursor=MDAwMS0wMS0wMVQwMDowMDowMCsxNDowMHx4", {}, 400, "invalid_parameter", "cursor: "),
]


@pytest.mark.parametrize(("method", "path", "sent", "status", "code", "words"), REQUESTS,
                         ids=[f"{r[0]} {r[1]}"[:60] for r in REQUESTS])
def test_refusals_outside_the_spec(client: TestClient, method: str, path: str, sent: dict[str, Any], status: int,
                                   code: str | None, words: str | None) -> None:
    r = client.request(method, path, headers={**AUTH, **sent.get("headers", {})},
                       **{k: v for k, v in sent.items() if k != "headers"})
    assert r.status_code == status, r.text
    assert r.headers["x-neffcache-version"]
    if code is not None:
        assert r.json()["error"] == code
        assert words in r.json()["detail"]


def test_a_missing_token_is_401_asking_for_a_bearer_token(client: TestClient) -> None:
    r = client.post("/v1/compile", json=VALID)
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized" and "bearer token" in r.json()["detail"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_the_token_is_checked_before_the_body(client: TestClient) -> None:
    r = client.post("/v1/compile", json=_with("spec.target", "trn9"))
    assert (r.status_code, r.json()["error"]) == (401, "unauthorized")


def test_an_unexpected_exception_is_a_500_without_a_traceback(client: TestClient,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="neffcache.service.errors"):
        r = client.get("/v1/test-crash", headers=AUTH)
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error", "detail": "internal error (RuntimeError); see the service log"}
    assert SECRET not in r.text and "Traceback" not in r.text and "errors.py" not in r.text
    # The service log has what the body leaves out.
    logged = [rec for rec in caplog.records if rec.name == "neffcache.service.errors"]
    assert logged and logged[-1].exc_info is not None
    assert "GET /v1/test-crash" in logged[-1].getMessage()
    assert SECRET in str(logged[-1].exc_info[1])


SURROGATE_FLAG = VALID["spec"] | {"compiler": {"name": "neuronx-cc", "version": "2.27.5334.0",
                                                "flags": ["--unknown-flag=\ud800"]}}


@pytest.mark.parametrize("path", ["/v1/compile", "/v1/lookup"])
def test_a_lone_surrogate_in_a_flag_is_422_not_a_500(client: TestClient, path: str) -> None:
    # json.dumps writes the surrogate as the escape "\ud800", as a client would send it.
    r = client.post(path, content=json.dumps({"spec": SURROGATE_FLAG}).encode(),
                    headers={**AUTH, "content-type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_flags"), r.text
    assert "surrogate" in r.json()["detail"] and "\\ud800" in r.json()["detail"]


def test_a_surrogate_in_a_field_name_is_refused_too(client: TestClient) -> None:
    body = json.dumps({"spec": VALID["spec"] | {"\udc80field": 1}}).encode()
    r = client.post("/v1/compile", content=body, headers={**AUTH, "content-type": "application/json"})
    assert (r.status_code, r.json()["error"]) == (422, "invalid_spec"), r.text


def test_an_error_quoting_text_that_is_not_utf8_is_still_sent() -> None:
    # Should a detail ever quote a lone surrogate, it goes out as a JSON escape, not as a 500.
    response = error_response(InvalidSpec("spec.flags: '\ud800' is odd", field="\udfff"))
    assert json.loads(response.body) == {"error": "invalid_spec", "detail": "spec.flags: '\ud800' is odd",
                                         "field": "\udfff"}


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("DELETE", f"/v1/blobs/sha256:{'ab' * 32}", "GET, HEAD, PUT"),  # three routes share the path
    ("PATCH", "/v1/artifacts", "GET, POST"),
    ("POST", "/v1/jobs/394a1b2c", "GET"),
    ("PUT", "/metrics", "GET"),
])
def test_a_405_lists_every_method_of_the_path_in_allow(client: TestClient, method: str, path: str,
                                                       allow: str) -> None:
    r = client.request(method, path, headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (405, "method_not_allowed")
    assert r.headers["allow"] == allow


def test_an_unexpected_exception_is_answered_inside_the_app(client: TestClient) -> None:
    # The app answers it itself and does not re-raise it to the server: an exception that reaches
    # uvicorn makes it close the connection, resetting the next request sent on it (keep-alive).
    with TestClient(client.app, raise_server_exceptions=True) as strict:
        r = strict.get("/v1/test-crash", headers=AUTH)
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert r.headers["x-neffcache-version"]
