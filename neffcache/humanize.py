"""Byte counts and durations as people read them (1.5 GiB, 2.5 min), for the CLI, the /ui page
and the scrub's summary: never parsed back. Pure, standard library only."""

from __future__ import annotations


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 100 -> '100 B': for people, never parsed back."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float) -> str:
    """12.5 -> '12.5 s', 150 -> '2.5 min', 5400 -> '1.5 h'."""
    if s < 60:
        return f"{s:.1f} s"
    return f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.1f} h"
