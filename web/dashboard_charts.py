"""The dashboard's charts as inline SVG, built on the server (no script, no chart library).

Each builder returns markup for one ``<svg>`` with a ``viewBox`` (it scales to its box), a
``<title>`` for screen readers and axis titles. Every text from data (a week, a category) is
escaped here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from markupsafe import Markup, escape

from web.dashboard_svg import (
    ADJUSTED,
    AXIS,
    BAND_COLOURS,
    BAND_FILL,
    GRID,
    INK,
    RAW,
    axis_titles,
    legend,
    nice_step,
    polyline,
    svg,
    text,
    y_axis,
)


@dataclass(frozen=True, slots=True)
class WeekPoint:
    label: str
    nps: float | None
    ci95: tuple[float, float] | None
    adjusted: float | None
    n: int


def weekly_chart(points: Sequence[WeekPoint]) -> Markup:
    """NPS per purchase week: the 95% band of the raw NPS, the raw and the adjusted lines."""
    width, height, left, right, top, bottom = 640, 280, 56, 628, 28, 232
    values = [v for p in points for v in (p.nps, p.adjusted) if v is not None]
    values += [v for p in points if p.ci95 for v in p.ci95]
    low = max(-100.0, min(values, default=0.0) - 5)
    high = min(100.0, max(values, default=50.0) + 5)
    body, y = y_axis(low, high, top, bottom, left, right)
    count = max(len(points), 1)
    slot = (right - left) / count

    def x(i: int) -> float:
        return left + slot * (i + 0.5)

    # The band: one polygon per run of weeks with an interval.
    runs: list[list[int]] = [[]]
    for i, p in enumerate(points):
        if p.ci95 is None:
            runs.append([])
        else:
            runs[-1].append(i)
    for run in (r for r in runs if r):
        upper = [f"{x(i):.1f},{y(points[i].ci95[1]):.1f}" for i in run]  # type: ignore[index]
        lower = [f"{x(i):.1f},{y(points[i].ci95[0]):.1f}" for i in reversed(run)]  # type: ignore[index]
        if len(run) == 1:
            i = run[0]
            ci = points[i].ci95
            assert ci is not None
            body.append(
                f'<rect x="{x(i) - 4:.1f}" y="{y(ci[1]):.1f}" width="8" '
                f'height="{y(ci[0]) - y(ci[1]):.1f}" fill="{BAND_FILL}"/>'
            )
        else:
            body.append(f'<polygon points="{" ".join(upper + lower)}" fill="{BAND_FILL}"/>')
    for attr, colour, dash in (("nps", RAW, ""), ("adjusted", ADJUSTED, ' stroke-dasharray="6 4"')):
        segment: list[str] = []
        for i, p in enumerate(points):
            value = getattr(p, attr)
            if value is None:
                if len(segment) > 1:
                    body.append(polyline(segment, colour, dash))
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(value):.1f}")
            body.append(f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}"/>')
        if len(segment) > 1:
            body.append(polyline(segment, colour, dash))
    every = max(1, math.ceil(count / 8))
    for i, p in enumerate(points):
        if i % every == 0:
            body.append(text(x(i), bottom + 16, p.label, text_anchor="middle", fill=AXIS))
    body += legend(left, 14, [("answered", RAW, ""), ("adjusted", ADJUSTED, "6 4")], band=True)
    body += axis_titles(width, height, "Week of purchase", "NPS")
    return svg(width, height, "NPS by week of purchase, with its 95% interval", body)


def histogram_chart(counts: Sequence[int], bands: Mapping[str, Sequence[int]]) -> Markup:
    """Answers per score 0..10, each bar in its band's colour."""
    width, height, left, right, top, bottom = 480, 250, 52, 472, 16, 202
    body, y = y_axis(0, max(max(counts, default=0), 1), top, bottom, left, right)
    slot = (right - left) / 11
    for score, n in enumerate(counts):
        band = next((b for b, (lo, hi) in bands.items() if lo <= score <= hi), "passive")
        x = left + slot * score + 4
        body.append(
            f'<rect x="{x:.1f}" y="{y(n):.1f}" width="{slot - 8:.1f}" '
            f'height="{max(bottom - y(n), 0):.1f}" fill="{BAND_COLOURS[band]}">'
            f"<title>score {score}: {n} answers ({band})</title></rect>"
        )
        body.append(text(x + (slot - 8) / 2, bottom + 16, score, text_anchor="middle", fill=AXIS))
    body += axis_titles(width, height, "Score", "Answers")
    return svg(width, height, "Answers per score, coloured by band", body)


_BAND_KEYS: Final = (
    ("detractors", "detractor"),
    ("passives", "passive"),
    ("promoters", "promoter"),
)


def bands_bar(counts: Mapping[str, int]) -> Markup:
    """Promoters, passives and detractors as shares of one bar."""
    width, height = 480, 86
    total = sum(counts.get(k, 0) for k in ("promoters", "passives", "detractors")) or 1
    body: list[str] = []
    x = 8.0
    span = width - 16
    for key, band in _BAND_KEYS:
        share = counts.get(key, 0) / total
        w = span * share
        body.append(
            f'<rect x="{x:.1f}" y="8" width="{w:.1f}" height="34" fill="{BAND_COLOURS[band]}"/>'
        )
        if w > 40:
            body.append(
                text(x + w / 2, 30, f"{100 * share:.0f}%", text_anchor="middle", fill="#fff")
            )
        x += w
    x = 8.0
    for key, band in _BAND_KEYS:
        body.append(
            f'<rect x="{x:.0f}" y="56" width="12" height="12" fill="{BAND_COLOURS[band]}"/>'
        )
        label = f"{key} {counts.get(key, 0):,}"
        body.append(text(x + 16, 66, label, fill=INK))
        x += 24 + 6.5 * len(label)
    body.append(
        text(width / 2, 84, "Share of answers", text_anchor="middle", fill=AXIS, class_="axis-x")
    )
    return svg(width, height, "Detractors, passives and promoters", body)


def rate_chart(groups: Sequence[Mapping[str, Any]], title: str, y_title: str) -> Markup:
    """Response rate per group (``{label, response_rate: {rate, ci95}}``) with its interval."""
    rows = [g for g in groups if g.get("response_rate", {}).get("rate") is not None]
    row_h, top, left, right = 30, 12, 88, 464
    width, height = 480, top + row_h * max(len(rows), 1) + 44
    bottom = height - 40
    highs = [g["response_rate"]["ci95"][1] for g in rows if g["response_rate"].get("ci95")]
    high = float(max([0.1, *highs, *(g["response_rate"]["rate"] for g in rows)]))
    step = nice_step(high * 100) / 100
    high = math.ceil(high / step) * step

    def x(v: float) -> float:
        return left + v / high * (right - left)

    body: list[str] = []
    tick = 0.0
    while tick <= high + 1e-9:
        body.append(
            f'<line x1="{x(tick):.1f}" x2="{x(tick):.1f}" y1="{top}" y2="{bottom}" '
            f'stroke="{GRID}"/>'
        )
        body.append(text(x(tick), bottom + 14, f"{100 * tick:g}%", text_anchor="middle", fill=AXIS))
        tick += step
    for i, g in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        rate = g["response_rate"]
        body.append(text(left - 8, cy + 4, g["label"], text_anchor="end", fill=INK))
        if rate.get("ci95"):
            lo, hi = rate["ci95"]
            body.append(
                f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                f'stroke="{RAW}" stroke-width="2"/>'
            )
        body.append(
            f'<circle cx="{x(rate["rate"]):.1f}" cy="{cy:.1f}" r="5" fill="{RAW}">'
            f"<title>{escape(g['label'])}: {100 * rate['rate']:.1f}% of "
            f"{rate.get('nobs', 0)}</title></circle>"
        )
    if not rows:
        body.append(
            text(width / 2, top + 18, "no closed invitations", text_anchor="middle", fill=AXIS)
        )
    body.append(
        text(
            (left + right) / 2,
            height - 6,
            "Response rate (95% interval)",
            text_anchor="middle",
            fill=AXIS,
            class_="axis-x",
        )
    )
    body.append(
        text(
            12,
            height / 2,
            y_title,
            fill=AXIS,
            class_="axis-y",
            text_anchor="middle",
            transform=f"rotate(-90 12 {height / 2:.1f})",
        )
    )
    return svg(width, height, title, body)


def funnel_chart(coverage: Mapping[str, Any]) -> Markup:
    """Purchases, eligible, invited, delivered, answered: one bar each, with counts."""
    steps = ["purchases", "eligible", "invited", "delivered", "answered"]
    row_h, top, left, right = 32, 8, 76, 380
    width, height = 480, top + row_h * len(steps) + 28
    base = max(int(coverage.get("purchases") or 0), 1)
    body: list[str] = []
    for i, step in enumerate(steps):
        n = int(coverage.get(step) or 0)
        y = top + row_h * i
        w = (right - left) * min(n / base, 1.0)
        body.append(
            f'<rect x="{left}" y="{y + 4}" width="{w:.1f}" height="{row_h - 10}" '
            f'fill="{RAW}" opacity="{1 - 0.13 * i:.2f}"/>'
        )
        body.append(text(left - 8, y + row_h / 2 + 3, step, text_anchor="end", fill=INK))
        body.append(
            text(left + w + 6, y + row_h / 2 + 3, f"{n:,} ({100 * n / base:.0f}%)", fill=INK)
        )
    body.append(
        text(
            (left + right) / 2,
            height - 6,
            "Count (share of purchases)",
            text_anchor="middle",
            fill=AXIS,
            class_="axis-x",
        )
    )
    return svg(width, height, "Coverage: from purchases to answers", body)
