"""POST /v1/artifacts (service/publish.py) in process: a file name that a file system would
take for something else is refused before anything is published (an artifact is immutable: one
published under "." or ".." could never be pulled, nor replaced)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from neffcache.db.models import ArtifactFile
from neffcache.service.app import create_app
from tests.support.api import digest_of, error_body
from tests.support.in_process import service_settings


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("publish")
    settings = service_settings(root, auth_required=False)
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def blobs(app: TestClient) -> dict[str, str]:
    made = {}
    for name, data in (("model", b"publish test model"), ("package", b"publish test package")):
        made[name] = digest_of(data)
        assert app.put(f"/v1/blobs/{made[name]}", content=data).status_code == 201
    return made


def _body(blobs: dict[str, str], *names: str, shape: int = 4) -> dict[str, Any]:
    spec = {"model": {"format": "torch-export", "digest": blobs["model"]},
            "inputs": [{"name": "x", "shape": [2, shape], "dtype": "float32"}], "target": "cpu",
            "compiler": {"name": "inductor", "version": "2.13.0+cpu"}}
    return {"spec": spec, "files": [{"name": n, "digest": blobs["package"]} for n in names]}


@pytest.mark.parametrize("name", [".", "..", "...", ".hidden", "-rf", "a//b", "a/../b", "/abs", "a/", "..\\x",
                                  "model.", "NUL", "con.pt2", "a\x00b", "a\nb", "", "x" * 129])
def test_an_unsafe_file_name_is_422_and_nothing_is_published(app: TestClient, blobs: dict[str, str],
                                                             name: str) -> None:
    body = error_body(app.post("/v1/artifacts", json=_body(blobs, name)), 422, "invalid_spec", "files[0].name")
    assert "safe file name" in body["detail"] or "files[0].name: " in body["detail"]
    with app.app.state.ctx.db.session() as session:
        assert session.query(ArtifactFile).filter(ArtifactFile.name == name).count() == 0


def test_names_that_differ_only_in_case_are_422(app: TestClient, blobs: dict[str, str]) -> None:
    error_body(app.post("/v1/artifacts", json=_body(blobs, "model.pt2", "MODEL.pt2")), 422, "invalid_spec",
               "ignoring case")


def test_a_safe_name_is_published_and_pulled_back(app: TestClient, blobs: dict[str, str]) -> None:
    made = app.post("/v1/artifacts", json=_body(blobs, "model.pt2", "compile.log", shape=8))
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    got = app.get(f"/v1/artifacts/{key}/files/compile.log")
    assert got.status_code == 200 and got.content == b"publish test package"
