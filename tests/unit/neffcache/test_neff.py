"""The NEFF header parser and the checks a publish makes."""

from __future__ import annotations

import io
import tarfile

import pytest

from neffcache.errors import InvalidNeff
from neffcache.neff import HEADER_SIZE, parse_header, validate
from tests.doubles.neuronx_cc_double import build_neff, build_payload

FILES = {"neff.json": b"{}", "sg00/program.bin": b"\x01" * 100}


def _validate(data: bytes):
    return validate(io.BytesIO(data), len(data))


def test_known_field_values_parse_back() -> None:
    data = build_neff(FILES, neff_version_major=2, neff_version_minor=1, neff_build_version="2.27.5334.0+abc",
                      num_tpb=4, name="unet", requested_tpb_count=2, feature_bits=0x11, lnc_size=2,
                      tpb_per_node=b"\x02" * 64, pkg_version=7)
    header = _validate(data)
    assert header == parse_header(data)
    assert (header.pkg_version, header.header_size, header.data_size) == (7, HEADER_SIZE, len(data) - HEADER_SIZE)
    assert header.neff_version == "2.1" and header.neff_build_version == "2.27.5334.0+abc"
    assert (header.num_tpb, header.name, header.requested_tpb_count) == (4, "unet", 2)
    assert (header.feature_bits, header.lnc_size, header.tpb_per_node) == (0x11, 2, b"\x02" * 64)
    assert header.summary() == {"neff_version": "2.1", "neff_build_version": "2.27.5334.0+abc", "lnc_size": 2,
                                "feature_bits": 0x11, "num_tpb": 4, "name": "unet"}


def test_plain_tar_payload_is_accepted() -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("neff.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    payload = raw.getvalue()
    header = build_neff(FILES)[:HEADER_SIZE]
    patched = header[:0x10] + len(payload).to_bytes(8, "little") + header[0x18:]
    assert _validate(patched + payload).data_size == len(payload)


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda: build_neff(FILES)[:500], "shorter than the 1024-byte"),
        (lambda: build_neff(FILES)[:-10], "but the file has"),
        (lambda: build_neff(FILES) + b"trailing", "but the file has"),
        (lambda: build_neff(FILES, header_size=10), "header_size 10 does not fit"),
        (lambda: build_neff(FILES, header_size=1 << 40), "does not fit"),
        (lambda: build_neff(FILES, data_size=5), "data_size 5"),
        (lambda: build_neff(FILES, neff_version_major=3), "neff_version 3.0 is newer"),
    ],
    ids=["too-short", "truncated", "trailing-bytes", "header-size-small", "header-size-huge", "data-size",
         "future-version"],
)
def test_refusals(make, reason: str) -> None:
    with pytest.raises(InvalidNeff, match=reason):
        _validate(make())


def test_payload_that_is_not_a_tarball() -> None:
    garbage = b"\x00\x01not a tar at all" * 64
    header = build_neff(FILES)[:HEADER_SIZE]
    patched = header[:0x10] + len(garbage).to_bytes(8, "little") + header[0x18:]
    with pytest.raises(InvalidNeff, match="not a tarball"):
        _validate(patched + garbage)


def test_gzip_that_is_not_a_tar_inside() -> None:
    import gzip

    payload = gzip.compress(b"just text, no tar headers" * 40)
    header = build_neff(FILES)[:HEADER_SIZE]
    patched = header[:0x10] + len(payload).to_bytes(8, "little") + header[0x18:]
    with pytest.raises(InvalidNeff, match="not a tarball"):
        _validate(patched + payload)


def test_build_payload_is_a_real_tarball() -> None:
    with tarfile.open(fileobj=io.BytesIO(build_payload(FILES)), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == sorted(FILES)
