"""The OpenAPI document describes every error answer: each route lists the statuses it can
answer with, each with the ErrorBody schema and the codes of the table in neffcache/errors.py
(the one the handlers answer from), which is the README's table too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from neffcache import errors
from neffcache.service.app import create_app
from tests.support.in_process import service_settings
from tests.support.stack import REPO

ERROR_REF = "#/components/schemas/ErrorBody"
UNAUTHENTICATED = {"/healthz", "/readyz", "/metrics"}
BODY_CODES = {"malformed_json", "invalid_spec", "unknown_target", "unknown_compiler", "invalid_dtype",
              "invalid_shape", "invalid_flags"}
# What each route can answer besides what its shape implies (auth, parameters, body, 500).
DOMAIN = {
    ("put", "/v1/blobs/{digest}"): {"invalid_digest", "digest_mismatch", "too_large", "storage_unavailable"},
    ("get", "/v1/blobs/{digest}"): {"invalid_digest", "not_found", "corrupt_object", "storage_unavailable"},
    ("head", "/v1/blobs/{digest}"): {"invalid_digest", "not_found"},
    ("post", "/v1/compile"): {"blob_missing", "toolchain_ambiguous", "toolchain_unavailable", "toolchain_mismatch"},
    ("post", "/v1/lookup"): {"not_found", "toolchain_ambiguous", "toolchain_unavailable", "toolchain_mismatch"},
    ("get", "/v1/jobs/{job_id}"): {"invalid_parameter", "not_found", "ambiguous_prefix"},
    ("get", "/v1/jobs/{job_id}/log"): {"not_found", "ambiguous_prefix", "corrupt_object", "storage_unavailable"},
    ("post", "/v1/jobs/{job_id}/cancel"): {"not_found", "ambiguous_prefix", "job_finished"},
    ("get", "/v1/artifacts/{key}"): {"not_found", "ambiguous_prefix"},
    ("get", "/v1/artifacts/{key}/files/{name}"): {"not_found", "ambiguous_prefix", "corrupt_object",
                                                   "storage_unavailable"},
    ("post", "/v1/artifacts"): {"blob_missing", "artifact_exists", "invalid_neff", "toolchain_mismatch",
                                "corrupt_object", "storage_unavailable"},
    ("get", "/v1/hits"): {"not_found", "ambiguous_prefix"},
    ("put", "/v1/pins/{name}"): {"not_found", "ambiguous_prefix", "invalid_spec"},
    ("get", "/v1/pins/{name}"): {"not_found"},
    ("delete", "/v1/pins/{name}"): {"not_found"},
    ("get", "/readyz"): {"not_ready"},
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("openapi")
    settings = service_settings(root, auth_required=True)
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def documented_codes(operation: dict[str, Any], method: str) -> dict[int, set[str]]:
    """{status: codes} of the operation's error responses; each must be an ErrorBody."""
    found: dict[int, set[str]] = {}
    for status, response in operation["responses"].items():
        if int(status) < 400:
            continue
        codes = set(re.findall(r"`([a-z_]+)`", response["description"]))
        if method != "head":  # an answer to HEAD has no body to describe
            schema = response["content"]["application/json"]["schema"]
            ref, narrowed = schema["allOf"]
            assert ref == {"$ref": ERROR_REF}, (method, status)
            assert set(narrowed["properties"]["error"]["enum"]) == codes, (method, status)
        found[int(status)] = codes
    return found


def test_the_error_body_schema(document: dict[str, Any]) -> None:
    schema = document["components"]["schemas"]["ErrorBody"]
    assert schema["type"] == "object" and set(schema["required"]) == {"error", "detail"}
    assert schema["properties"]["error"]["type"] == schema["properties"]["detail"]["type"] == "string"
    assert schema["additionalProperties"] is True  # e.g. `key` and `nearest` of a lookup's miss
    # FastAPI's own validation error body is never answered (a bad parameter is 400 invalid_parameter).
    assert "HTTPValidationError" not in str(document)


def test_every_error_response_is_an_error_body_with_the_codes_of_its_status(document: dict[str, Any]) -> None:
    seen = 0
    for method, path, operation in operations(document):
        for status, codes in documented_codes(operation, method).items():
            assert codes, (method, path, status)
            for code in codes:
                assert errors.HTTP_STATUS[code] == status, (method, path, code, status)
                seen += 1
    assert seen > 50


def test_every_route_documents_the_errors_its_shape_implies(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        codes = documented_codes(operation, method)
        where = f"{method.upper()} {path}"
        if path not in UNAUTHENTICATED:
            assert operation.get("security"), where
            assert "unauthorized" in codes.get(401, set()) and "forbidden" in codes.get(403, set()), where
        else:
            assert 401 not in codes and 403 not in codes, where
        if operation.get("parameters"):
            assert "invalid_parameter" in codes.get(400, set()), where
        if operation.get("requestBody"):
            assert BODY_CODES <= codes.get(400, set()) | codes.get(422, set()), where
        assert codes.get(500) == {"internal_error"}, where


@pytest.mark.parametrize(("method", "path"), sorted(DOMAIN), ids=[f"{m.upper()} {p}" for m, p in sorted(DOMAIN)])
def test_each_route_documents_its_own_errors(document: dict[str, Any], method: str, path: str) -> None:
    codes = set().union(*documented_codes(document["paths"][path][method], method).values())
    assert DOMAIN[(method, path)] <= codes


def test_text_answers_are_documented_as_text(document: dict[str, Any]) -> None:
    for path in ("/metrics", "/v1/jobs/{job_id}/log"):
        assert list(document["paths"][path]["get"]["responses"]["200"]["content"]) == ["text/plain"]


def _readme_table() -> dict[int, set[str]]:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## HTTP API"):]
    table: dict[int, set[str]] = {}
    for line in section.splitlines():
        row = re.match(r"^\| (\d{3})(?: / (\d{3}))? \| (.+) \|$", line)
        if row:
            codes = set(re.findall(r"`([a-z_]+)`", row.group(3)))
            for status in filter(None, row.group(1, 2)):
                table.setdefault(int(status), set()).update(codes)
    return table


def test_the_readme_lists_every_code_the_document_does(document: dict[str, Any]) -> None:
    readme = _readme_table()
    for method, path, operation in operations(document):
        for status, codes in documented_codes(operation, method).items():
            for code in codes:
                assert code in readme.get(status, set()), (
                    f"{code} ({status}, {method.upper()} {path}) is not in the README's table of codes")


def test_the_readme_table_is_the_errors_table() -> None:
    for status, codes in _readme_table().items():
        for code in codes:
            assert errors.HTTP_STATUS[code] == status, (code, status)
