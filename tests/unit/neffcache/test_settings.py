"""Settings as the environment gives them: byte counts with units, "none" for the optional ones,
and the refusal of a GC grace period shorter than a presigned URL's life."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from neffcache.settings import Settings

GIB = 1024**3


@pytest.mark.parametrize(("given", "expected"), [
    ("1048576", 1048576), ("500GiB", 500 * GIB), ("2TB", 2 * 1000**4), ("1.5 GiB", int(1.5 * GIB)),
    ("10k", 10_000), ("0", 0), ("none", None),
])
def test_a_quota_is_a_byte_count_with_or_without_a_unit(monkeypatch: pytest.MonkeyPatch, given: str,
                                                         expected: int | None) -> None:
    monkeypatch.setenv("NEFFCACHE_GC_QUOTA_BYTES", given)
    assert Settings().gc_quota_bytes == expected


@pytest.mark.parametrize("given", ["lots", "5 parsecs", "-1", "1e3GiB", ""])
def test_a_quota_that_is_no_byte_count_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv("NEFFCACHE_GC_QUOTA_BYTES", given)
    with pytest.raises(ValidationError, match="gc_quota_bytes"):
        Settings()


def test_namespace_quotas_are_json_with_byte_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEFFCACHE_GC_NAMESPACE_QUOTA_BYTES", '{"search": "200GiB", "ads": 1000}')
    assert Settings().gc_namespace_quota_bytes == {"search": 200 * GIB, "ads": 1000}


def test_a_failure_ttl_of_none_remembers_for_ever(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().failure_ttl_s == 7 * 24 * 3600
    monkeypatch.setenv("NEFFCACHE_FAILURE_TTL_S", "none")
    assert Settings().failure_ttl_s is None


def test_a_grace_period_shorter_than_a_presigned_urls_life_is_refused() -> None:
    with pytest.raises(ValidationError, match="gc_grace_s .* must be at least presign_expiry_s"):
        Settings(gc_grace_s=600, presign_expiry_s=900)
    assert Settings(gc_grace_s=960, presign_expiry_s=900).gc_grace_s == 960
