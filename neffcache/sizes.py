"""Byte counts as people write them (1048576, 500GiB, 2TB, 1.5 GiB), for settings. Pure,
standard library only."""

from __future__ import annotations

import re

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_size(value: object) -> object:
    """An int for a count of bytes written as a number or with a unit (KB = 1000, KiB = 1024);
    anything else is returned as it is, for the caller's own validation to refuse."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else value
    match = _SIZE.fullmatch(value)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{value!r} is not a byte count (e.g. 1048576, 500GiB, 2TB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])

