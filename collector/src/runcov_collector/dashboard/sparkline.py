"""Inline SVG sparklines for coverage trends (server-rendered, no JS needed)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Sparkline:
    """Points of a polyline plus what each point means (for tooltips)."""

    points: str
    width: int
    height: int
    labels: list[str]
    last: int


def cumulative_lines(series: list[dict[str, Any]], width: int = 120, height: int = 24) -> Sparkline:
    """Lines covered so far, hour by hour: the running sum of ``new_lines``."""
    totals = []
    labels = []
    running = 0
    for bucket in sorted(series, key=lambda b: b["hour"]):
        running += int(bucket.get("new_lines") or 0)
        totals.append(running)
        labels.append(f"{bucket['hour']}: {running} lines, {bucket.get('requests', 0)} requests")
    if not totals:
        return Sparkline("", width, height, [], 0)
    if len(totals) == 1:
        totals = totals * 2
        labels = labels * 2
    top = max(totals) or 1
    step = (width - 2) / (len(totals) - 1)
    coords = []
    for i, value in enumerate(totals):
        x = 1 + i * step
        y = height - 1 - (height - 2) * value / top
        coords.append(f"{x:.1f},{y:.1f}")
    return Sparkline(" ".join(coords), width, height, labels, totals[-1])
