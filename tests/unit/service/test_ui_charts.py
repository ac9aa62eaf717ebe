"""The plots' geometry (neffcache.service.ui_charts): bars scaled to a round ceiling, a point
without data drawn as no bar and a zero as a hairline, and shares of a whole."""

from __future__ import annotations

import pytest

from neffcache.service.ui_charts import HEIGHT, TOP, Point, bar_chart, nice_ceiling, share

BOTTOM_Y = HEIGHT - 24  # ui_charts.BOTTOM


@pytest.mark.parametrize("value, ceiling", [(0, 1.0), (-3, 1.0), (0.3, 0.5), (1, 1), (1.2, 2), (3, 5), (7, 10),
                                            (10, 10), (42, 50), (0.07, 0.1), (180.5, 200)])
def test_nice_ceiling(value: float, ceiling: float) -> None:
    assert nice_ceiling(value) == pytest.approx(ceiling)


def test_bars_are_scaled_to_the_ceiling_and_missing_points_drawn_as_none() -> None:
    chart = bar_chart([Point("a", 1.0, "full"), Point("b", None, "none"), Point("c", 0.0, "zero"),
                       Point("d", 0.5, "half")], str, top=1.0)
    full, zero, half = chart.bars
    assert [b.title for b in chart.bars] == ["full", "zero", "half"]
    assert full.y == TOP and full.y + full.height == BOTTOM_Y == chart.baseline
    assert zero.height == 1.0 and half.height == pytest.approx(full.height / 2)
    assert [g.text for g in chart.grid] == ["0.0", "0.25", "0.5", "0.75", "1.0"]
    assert [label.text for label in chart.x_labels] == ["a"]  # one label every LABEL_EVERY points


def test_without_a_top_the_axis_ends_at_a_round_number_above_the_largest_value() -> None:
    chart = bar_chart([Point("a", 3.0, ""), Point("b", 1.5, "")], lambda v: f"{v:g}")
    assert chart.grid[-1].text == "5" and chart.bars[0].height == pytest.approx((BOTTOM_Y - TOP) * 3 / 5)


@pytest.mark.parametrize("part, whole, percent, over", [(5, 10, 50.0, False), (15, 10, 100.0, True),
                                                        (0, 10, 0.0, False)])
def test_share(part: float, whole: float, percent: float, over: bool) -> None:
    found = share(part, whole)
    assert found is not None and (found.percent, found.over) == (percent, over)


@pytest.mark.parametrize("whole", [None, 0])
def test_no_share_without_a_whole(whole: float | None) -> None:
    assert share(3, whole) is None
