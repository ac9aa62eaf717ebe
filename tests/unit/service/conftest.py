"""Fixtures of the in-process service tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from neffcache import tokens
from neffcache.db.models import Artifact, ArtifactFile, Blob
from neffcache.key import key_for_spec
from neffcache.service.app import create_app
from neffcache.service.context import ServiceContext
from neffcache.spec import CompileSpec
from tests.support.api import NEURON_COMPILER, NEURON_RUNTIME, neuron_spec
from tests.support.in_process import migrated_sqlite, service_settings


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite database, where `neffcache-admin` finds it (NEFFCACHE_DATABASE_URL)."""
    url = migrated_sqlite(tmp_path)
    monkeypatch.setenv("NEFFCACHE_DATABASE_URL", url)
    return url


MODEL = "sha256:" + "1" * 64
# A spec naming both versions: resolving it needs no registered worker.
SPEC = neuron_spec(MODEL, namespace="team-a",
                   compiler={"name": "neuronx-cc", "version": NEURON_COMPILER, "flags": ["-O2"]},
                   runtime={"name": "neuron-runtime", "version": NEURON_RUNTIME})


@dataclass
class HitPath:
    client: TestClient
    ctx: ServiceContext
    key: str
    statements: list[str]

    def served(self, kind: str, source: str) -> float:
        """neffcache_hits_served for (kind, source) so far."""
        return self.ctx.metrics.registry.get_sample_value(
            "neffcache_hits_served_total", {"kind": kind, "source": source}) or 0.0

    def counted(self, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, Any], int]:
        """(status, body, SQL statements the request ran)."""
        before = len(self.statements)
        r = self.client.request(method, path, **kwargs)
        return r.status_code, r.json(), len(self.statements) - before


@pytest.fixture
def hit_path(tmp_path: Path) -> Iterator[HitPath]:
    settings = service_settings(tmp_path, auth_required=True, hot_cache_s=60.0, event_flush_s=60.0)
    app = create_app(settings)
    ctx: ServiceContext = app.state.ctx
    manifest, key = key_for_spec(CompileSpec.model_validate(SPEC).model_dump(mode="json"))
    with ctx.db.session() as session:
        token = tokens.create_token(session, "pods", "write", namespaces=["team-a"])
        session.add(Blob(digest=MODEL, size=1))
        session.add(Artifact.from_manifest(
            key, manifest, [ArtifactFile(name="model.neff", digest="sha256:" + "2" * 64, size=2048, neff=None)],
            compile_seconds=30.0, job_id=None, annotations=None, origin_token="release-bot"))
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(ctx.db.engine, "before_cursor_execute", listener)
    try:
        with TestClient(app, headers={"Authorization": f"Bearer {token}"}) as client:
            yield HitPath(client, ctx, key, statements)
    finally:
        event.remove(ctx.db.engine, "before_cursor_execute", listener)
