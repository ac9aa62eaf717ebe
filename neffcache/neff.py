"""The NEFF header: parse it, and check that a file is a NEFF before it is published.

A NEFF is a 1024-byte little-endian header followed by a tarball (gzip-compressed by
default). There is no magic number, so "looks like a NEFF" means: the header's sizes fit the
file, the payload opens as a tar archive, and the format version is one a runtime reads.
Layout, from AWS's "work with NEFF files" page:

    pkg_version u64 @0x000   header_size u64 @0x008   data_size u64 @0x010
    neff_version_major u64 @0x018   neff_version_minor u64 @0x020
    neff_build_version 128 bytes @0x028   num_tpb u32 @0x0A8   hash 32 bytes @0x0AC
    uuid 16 bytes @0x0CC   name 256 bytes @0x0DC   requested_tpb_count u32 @0x1DC
    tpb_per_node 64 bytes @0x1E0   feature_bits u64 @0x220   lnc_size u32 @0x228

Standard library only; reads from a stream it is given and opens nothing itself.
"""

from __future__ import annotations

import gzip
import struct
import tarfile
from dataclasses import dataclass
from typing import Any, BinaryIO

from neffcache.errors import InvalidNeff

HEADER_SIZE = 1024
HEADER_FORMAT = "<QQQQQ128sI32s16s256sI64sQI"
# Newest NEFF format a current Neuron runtime loads; a NEFF above it is from a compiler the
# runtimes we serve cannot read.
MAX_NEFF_VERSION_MAJOR = 2


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


@dataclass(frozen=True)
class NeffHeader:
    pkg_version: int
    header_size: int
    data_size: int
    neff_version_major: int
    neff_version_minor: int
    neff_build_version: str
    num_tpb: int
    hash: bytes
    uuid: bytes
    name: str
    requested_tpb_count: int
    tpb_per_node: bytes
    feature_bits: int
    lnc_size: int

    @property
    def neff_version(self) -> str:
        return f"{self.neff_version_major}.{self.neff_version_minor}"

    def summary(self) -> dict[str, Any]:
        """What the cache records with the artifact (and `neffcache show` prints)."""
        return {
            "neff_version": self.neff_version,
            "neff_build_version": self.neff_build_version,
            "lnc_size": self.lnc_size,
            "feature_bits": self.feature_bits,
            "num_tpb": self.num_tpb,
            "name": self.name,
        }


def parse_header(data: bytes) -> NeffHeader:
    """Parse the first 1024 bytes of a NEFF (more may be given; they are ignored)."""
    if len(data) < HEADER_SIZE:
        raise InvalidNeff(f"file is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte NEFF header")
    fields = struct.unpack_from(HEADER_FORMAT, data)
    (pkg, header_size, data_size, major, minor, build, num_tpb, digest, uuid, name,
     requested, tpb_per_node, feature_bits, lnc) = fields
    return NeffHeader(pkg, header_size, data_size, major, minor, _text(build), num_tpb, digest, uuid,
                      _text(name), requested, tpb_per_node, feature_bits, lnc)


def validate(stream: BinaryIO, size: int) -> NeffHeader:
    """Check a whole NEFF of `size` bytes read from `stream` (positioned at its start)."""
    header = parse_header(stream.read(HEADER_SIZE))
    if header.header_size < HEADER_SIZE or header.header_size > size:
        raise InvalidNeff(f"header_size {header.header_size} does not fit a {size}-byte file")
    if header.header_size + header.data_size != size:
        raise InvalidNeff(
            f"header_size {header.header_size} + data_size {header.data_size} = "
            f"{header.header_size + header.data_size} bytes, but the file has {size}"
        )
    if header.neff_version_major > MAX_NEFF_VERSION_MAJOR:
        raise InvalidNeff(
            f"neff_version {header.neff_version} is newer than any runtime reads "
            f"(major {MAX_NEFF_VERSION_MAJOR} at most)"
        )
    stream.seek(header.header_size)
    _check_tarball(stream)
    return header


GZIP_MAGIC = b"\x1f\x8b"
TAR_MAGIC_OFFSET = 257  # "ustar" in every POSIX, GNU and pax tar header


def _check_tarball(stream: BinaryIO) -> None:
    start = stream.tell()
    compressed = stream.read(2) == GZIP_MAGIC
    stream.seek(start)
    try:
        source: gzip.GzipFile | BinaryIO = gzip.GzipFile(fileobj=stream, mode="rb") if compressed else stream
        first_block = source.read(512)
    except (OSError, EOFError) as exc:
        raise InvalidNeff(f"payload is not a tarball: its gzip stream is broken ({exc})") from None
    if len(first_block) < 512 or first_block[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] != b"ustar":
        kind = "gzip data" if compressed else "payload"
        raise InvalidNeff(f"payload is not a tarball (gzip or plain): the {kind} has no tar header")
    stream.seek(start)
    try:
        # "r:*" reads gzip and plain tar alike; opening it parses the first member's header.
        with tarfile.open(fileobj=stream, mode="r:*") as tar:
            if tar.next() is None:
                raise InvalidNeff("payload is an empty tar archive")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidNeff(f"payload is not a tarball (gzip or plain): {exc}") from None
