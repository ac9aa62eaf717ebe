"""Object store fixtures: one SeaweedFS per test session, and a fresh store per test.

`object_store` is parametrized over the folder store and the S3 store (against SeaweedFS), so a
test that takes it states a behaviour of both. SeaweedFS not starting is a failure, never a skip:
a suite that silently skipped S3 would claim what it did not check.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from neffcache.settings import Settings
from neffcache.storage import ObjectStore, open_store
from tests.support.seaweedfs import SeaweedFS

TEST_BUCKET = "neffcache-test"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A running SeaweedFS with bucket `neffcache-test` (as attribute `bucket`)."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.create_bucket(TEST_BUCKET)
        server.bucket = TEST_BUCKET  # type: ignore[attr-defined]
        yield server
    finally:
        server.stop()


def s3_settings_overrides(seaweedfs: SeaweedFS, prefix: str) -> dict[str, Any]:
    """Settings fields for an S3 store on `seaweedfs`, under key prefix `prefix`."""
    return {
        "storage_url": f"s3://{TEST_BUCKET}/{prefix}",
        "s3_endpoint_url": seaweedfs.endpoint_url,
        "s3_access_key_id": seaweedfs.access_key,
        "s3_secret_access_key": seaweedfs.secret_key,
    }


@pytest.fixture(params=["filesystem", "s3"])
def object_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    """A fresh, empty store of each kind, built through open_store like the service builds it.

    Its staging folder is private to the test (for S3 too), so a test can check that nothing
    was left there.
    """
    if request.param == "filesystem":
        store = open_store(Settings(storage_url=f"file://{tmp_path / 'objects'}"))
    else:
        server: SeaweedFS = request.getfixturevalue("seaweedfs")
        prefix = f"test-{uuid.uuid4().hex[:12]}"
        store = open_store(Settings(**s3_settings_overrides(server, prefix)))
        staging = tmp_path / "s3-staging"
        staging.mkdir()
        store.staging_dir = staging  # type: ignore[misc]
    yield store
