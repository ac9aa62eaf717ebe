"""/ui's HTML: the templates in service/ui_templates/ (package data), autoescaped, with the
filters that write the page's numbers and times, and the plots' geometry (service.ui_charts)."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from neffcache import humanize
from neffcache.service import ui_charts
from neffcache.service.ui import Hour

TEMPLATES = Path(__file__).resolve().parent / "ui_templates"
STATIC = Path(__file__).resolve().parent / "ui_static"
LOG_TAIL_LINES = 30  # of a failed job's log, on the page


def human_bytes(n: float | None) -> str:
    return "–" if n is None else humanize.human_bytes(n)


def human_seconds(s: float | None) -> str:
    return "–" if s is None else humanize.human_seconds(s)


def percent(ratio: float | None) -> str:
    return "–" if ratio is None else f"{ratio * 100:.1f}%"


def when(at: str | datetime | None) -> str:
    """'2026-01-02 03:04Z (5.0 min ago)' of a time or the API's ISO text of one (that text as it
    is when it does not read as one)."""
    if not at:
        return "–"
    try:
        ts = at if isinstance(at, datetime) else datetime.fromisoformat(at)
    except ValueError:
        return str(at)
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    ago = max((datetime.now(UTC) - ts).total_seconds(), 0.0)
    return f"{ts:%Y-%m-%d %H:%M}Z ({human_seconds(ago)} ago)"


def tail(text: str | None, lines: int = LOG_TAIL_LINES) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def hit_rate_chart(history: list[Hour]) -> ui_charts.BarChart:
    return ui_charts.bar_chart(
        [ui_charts.Point(f"{h.start:%H}h", h.hit_rate,
                         f"{h.start:%Y-%m-%d %H}:00Z: {percent(h.hit_rate)} of {h.lookups} lookups")
         for h in history],
        percent, top=1.0)


def saved_chart(history: list[Hour]) -> ui_charts.BarChart:
    return ui_charts.bar_chart(
        [ui_charts.Point(f"{h.start:%H}h", h.saved_seconds if h.lookups else None,
                         f"{h.start:%Y-%m-%d %H}:00Z: {human_seconds(h.saved_seconds)} saved by {h.lookup_hits} hits")
         for h in history],
        human_seconds)


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(bytes=human_bytes, seconds=human_seconds, percent=percent, when=when, tail=tail)
    env.globals.update(share=ui_charts.share, hit_rate_chart=hit_rate_chart, saved_chart=saved_chart)
    return env


def render(template: str, **values: Any) -> str:
    return environment().get_template(template).render(**values)
