"""The page's plots as SVG geometry, worked out here and drawn by the templates.

Drawn on the server, a plot is part of the HTML the service sends: no charting library to vendor
and keep up to date, nothing for the browser to run (the page's one script only fetches the
panels), and the page's Content-Security-Policy can refuse every inline script and style. A bar's
tooltip is its SVG <title>. Pure: numbers in, coordinates out."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WIDTH, HEIGHT = 1200, 180
LEFT, RIGHT, TOP, BOTTOM = 56, 8, 10, 24  # room for the axes' labels
TICKS = 4  # horizontal grid lines above the baseline
LABEL_EVERY = 6  # an x label every this many bars (hours)


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    title: str  # what the bar stands for, shown on hover


@dataclass(frozen=True)
class Label:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    left: int
    baseline: float
    bars: tuple[Bar, ...]
    grid: tuple[Label, ...]  # y: where the line is; text: its value
    x_labels: tuple[Label, ...]


@dataclass(frozen=True)
class Point:
    label: str  # the x axis' name for it (an hour)
    value: float | None  # None: nothing to plot there (no lookups that hour)
    title: str


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= value * (1 - 1e-9))


def bar_chart(points: Sequence[Point], fmt: Callable[[float], str], top: float | None = None) -> BarChart:
    """One bar per point, scaled to `top` (else to a round number above the largest value); the
    y axis' values written with `fmt`."""
    ceiling = top if top is not None else nice_ceiling(max((p.value or 0.0 for p in points), default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    baseline = TOP + plot_h
    slot = plot_w / max(len(points), 1)
    bars, labels = [], []
    for i, p in enumerate(points):
        x = LEFT + i * slot
        if p.value is not None:
            h = plot_h * min(max(p.value, 0.0) / ceiling, 1.0)
            # A zero is drawn as a hairline: the hour had lookups, none of them hits.
            h = max(h, 1.0)
            bars.append(Bar(round(x + slot * 0.1, 2), round(baseline - h, 2), round(slot * 0.8, 2), round(h, 2),
                            p.title))
        if i % LABEL_EVERY == 0:
            labels.append(Label(round(x + slot / 2, 2), baseline + 16, p.label))
    grid = tuple(Label(LEFT - 6, round(baseline - plot_h * k / TICKS, 2), fmt(ceiling * k / TICKS))
                 for k in range(TICKS + 1))
    return BarChart(WIDTH, HEIGHT, LEFT, baseline, tuple(bars), grid, tuple(labels))


@dataclass(frozen=True)
class Share:
    """A horizontal bar of `part` against `whole` (a quota, a total): its width in percent."""

    percent: float
    over: bool  # part exceeds whole


def share(part: float, whole: float | None) -> Share | None:
    """None when there is nothing to measure against (no quota, no total)."""
    if not whole:
        return None
    ratio = part / whole
    return Share(round(min(ratio, 1.0) * 100, 1), ratio > 1.0)
