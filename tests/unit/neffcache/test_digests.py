"""neffcache/digests.py: the one home of the sha256 digest forms and their helpers; and the parts
that used to keep their own regex or prefix-stripping now use it."""

from __future__ import annotations

import pytest

from neffcache import digests
from neffcache.digests import bare_hex, digest_of, is_bare_hex, is_digest

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(("value", "digest", "hex_"), [
    (f"sha256:{HEX}", True, False),
    (HEX, False, True),
    (f"sha256:{HEX}\n", False, False),  # a trailing newline is not part of a digest
    (f"{HEX}\n", False, False),
    (f"sha256:{HEX.upper()}", False, False),  # lowercase only
    (f"sha256:{HEX[:-1]}", False, False),
    (f"sha256:{HEX}0", False, False),
    (f"SHA256:{HEX}", False, False),
    (f"sha512:{HEX}", False, False),
    (f" sha256:{HEX}", False, False),
    ("", False, False),
    (None, False, False),
    (123, False, False),
])
def test_is_digest_and_is_bare_hex(value: object, digest: bool, hex_: bool) -> None:
    assert is_digest(value) is digest
    assert is_bare_hex(value) is hex_


@pytest.mark.parametrize(("value", "bare"), [
    (f"sha256:{HEX}", HEX),
    (HEX, HEX),  # already bare
    ("", ""),
    ("abc:def", "abc:def"),  # only the sha256: prefix is stripped
])
def test_bare_hex(value: str, bare: str) -> None:
    assert bare_hex(value) == bare


def test_digest_of_is_the_inverse_of_bare_hex() -> None:
    assert digest_of(HEX) == f"sha256:{HEX}"
    assert bare_hex(digest_of(HEX)) == HEX
    assert is_digest(digest_of(HEX))


def test_the_schema_and_the_store_use_the_one_definition() -> None:
    from pydantic import ValidationError

    from neffcache import spec
    from neffcache.errors import InvalidDigest
    from neffcache.storage.base import validate_digest

    assert spec.DIGEST_PATTERN is digests.DIGEST_PATTERN and spec.is_digest is is_digest
    assert spec.ModelRef(format="hlo", digest=f"sha256:{HEX}").digest == f"sha256:{HEX}"
    with pytest.raises(ValidationError):
        spec.ModelRef(format="hlo", digest=HEX)
    assert validate_digest(HEX) == HEX
    with pytest.raises(InvalidDigest):
        validate_digest(f"sha256:{HEX}")


def test_the_client_uses_the_one_definition() -> None:
    from neffcache.client import output
    from neffcache.client.lockfile import LockedFile

    assert output.short(f"sha256:{HEX}") == HEX[:12]
    assert output.short("394a1b2c-0000") == "394a1b2c-000"
    assert LockedFile("model.neff", f"sha256:{HEX}", 1).sha256 == HEX


@pytest.mark.parametrize(("value", "ok"), [
    ("901c66ed", True), ("a" * 64, True), ("901c66e", False), ("a" * 65, False), ("901C66ED", False),
    ("901c66eg", False), ("901c66ed\n", False), ("", False), (None, False),
])
def test_a_key_prefix_is_8_to_64_lowercase_hex(value: object, ok: bool) -> None:
    assert digests.is_key_prefix(value) is ok
