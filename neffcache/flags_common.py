"""What the flag rules of every compiler share (neffcache/flags.py, neffcache/flags_inductor.py):
the result type, the field name errors cite, and the checks every flag list passes first.
Pure: standard library only, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from neffcache.errors import InvalidFlags

FIELD = "compiler.flags"


class CanonicalFlags(NamedTuple):
    """What the key manifest records from a flag list: the ISA (or None) and the flags."""

    isa: str | None
    flags: list[str]



def check_tokens(flags: Sequence[str]) -> None:
    # A bare string would be iterated character by character; refuse it outright.
    if isinstance(flags, (str, bytes)) or not isinstance(flags, Sequence):
        raise InvalidFlags(f"{FIELD}: must be a list of strings, not {type(flags).__name__}")
    for index, token in enumerate(flags):
        where = f"{FIELD}[{index}]"
        if not isinstance(token, str):
            raise InvalidFlags(f"{where}: must be a string, not {type(token).__name__}")
        if token == "":
            raise InvalidFlags(f"{where}: empty string")
        # Flags become argv entries and lines in logs; NUL cannot be passed in argv at all and a
        # newline would let one flag forge log lines.
        if any(ch in token for ch in ("\x00", "\n", "\r")):
            raise InvalidFlags(f"{where}: {token!r}: contains a NUL or newline character")


def one_of(values: Sequence[str]) -> str:
    return ", ".join(values)
