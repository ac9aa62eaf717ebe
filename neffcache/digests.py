"""sha256 digests as neffcache writes them, defined once.

A blob or file is named by its digest, "sha256:<64 lowercase hex>"; the object store and the
X-Neffcache-Sha256 header use the bare hex; an artifact's cache key is a bare hex too.

Shared by the service, the workers and the client: pure, standard library only, no I/O.
"""

from __future__ import annotations

import re
from typing import TypeGuard

PREFIX = "sha256:"
HEX_PATTERN = r"^[0-9a-f]{64}$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"  # also the pydantic pattern of every digest field
DIGEST_FORM = "sha256:<64 lowercase hex>"  # how messages describe a digest

# A key may be named by a unique prefix of it, as git names commits: this many characters at least.
MIN_KEY_PREFIX = 8
KEY_PREFIX_PATTERN = rf"^[0-9a-f]{{{MIN_KEY_PREFIX},64}}$"

_HEX = re.compile(HEX_PATTERN)
_DIGEST = re.compile(DIGEST_PATTERN)
_KEY_PREFIX = re.compile(KEY_PREFIX_PATTERN)


def is_digest(value: object) -> TypeGuard[str]:
    """True for "sha256:<64 lowercase hex>" and nothing else."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def is_bare_hex(value: object) -> TypeGuard[str]:
    """True for 64 lowercase hex characters (a bare sha256, or a cache key) and nothing else."""
    return isinstance(value, str) and _HEX.fullmatch(value) is not None


def is_key_prefix(value: object) -> TypeGuard[str]:
    """True for a key or a prefix of one: MIN_KEY_PREFIX to 64 lowercase hex characters."""
    return isinstance(value, str) and _KEY_PREFIX.fullmatch(value) is not None


def bare_hex(digest: str) -> str:
    """'sha256:<hex>' -> '<hex>'; a value without the prefix is returned unchanged."""
    return digest.removeprefix(PREFIX)


def digest_of(hex_digest: str) -> str:
    """'<hex>' -> 'sha256:<hex>'."""
    return PREFIX + hex_digest
