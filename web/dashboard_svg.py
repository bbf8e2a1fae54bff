"""The pieces the dashboard's SVG charts are drawn with (:mod:`web.dashboard_charts`): the
document, escaped text, a value axis with round ticks, axis titles, lines and legends."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Final

from markupsafe import Markup, escape

BAND_COLOURS: Final = {"detractor": "#d64545", "passive": "#e0a100", "promoter": "#2f9e44"}
RAW, ADJUSTED, BAND_FILL = "#2563eb", "#7c3aed", "#bfd3fb"
AXIS, GRID, INK = "#52606d", "#e4e7eb", "#1f2933"
FONT = 'font-family="system-ui, sans-serif"'


def svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    head = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'xmlns="http://www.w3.org/2000/svg" {FONT} font-size="12">'
        f"<title>{escape(title)}</title>"
    )
    # Every text from data went through escape() in text() or at its f-string.
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704


def text(x: float, y: float, text: object, **attrs: object) -> str:
    # class_ is class; text_anchor is text-anchor.
    extra = "".join(f' {k.rstrip("_").replace("_", "-")}="{escape(v)}"' for k, v in attrs.items())
    return f'<text x="{x:.1f}" y="{y:.1f}"{extra}>{escape(text)}</text>'


def nice_step(span: float, ticks: int = 5) -> float:
    raw = max(span, 1e-9) / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= mult * power:
            return float(mult * power)
    return 10.0 * power  # pragma: no cover


def y_axis(
    low: float, high: float, top: float, bottom: float, left: float, right: float, unit: str = ""
) -> tuple[list[str], Callable[[float], float]]:
    step = nice_step(high - low)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    if high == low:
        high = low + step

    def y(v: float) -> float:
        return bottom - (v - low) / (high - low) * (bottom - top)

    out: list[str] = []
    v = low
    while v <= high + 1e-9:
        out.append(
            f'<line x1="{left}" x2="{right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="{GRID}"/>'
        )
        out.append(text(left - 6, y(v) + 4, f"{v:g}{unit}", text_anchor="end", fill=AXIS))
        v += step
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" stroke="{AXIS}"/>')
    return out, y


def axis_titles(width: int, height: int, x_title: str, y_title: str, left: int = 16) -> list[str]:
    return [
        text(width / 2, height - 4, x_title, text_anchor="middle", fill=AXIS, class_="axis-x"),
        text(
            left,
            height / 2,
            y_title,
            text_anchor="middle",
            fill=AXIS,
            class_="axis-y",
            transform=f"rotate(-90 {left} {height / 2:.1f})",
        ),
    ]


def polyline(points: list[str], colour: str, dash: str) -> str:
    return (
        f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" '
        f'stroke-width="2"{dash}/>'
    )


def legend(x: float, y: float, items: list[tuple[str, str, str]], band: bool) -> list[str]:
    out: list[str] = []
    for label, colour, dash in items:
        dashed = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{x:.0f}" x2="{x + 18:.0f}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" '
            f'stroke-width="2"{dashed}/>'
        )
        out.append(text(x + 22, y, label, fill=INK))
        x += 30 + 7 * len(label)
    if band:
        out.append(f'<rect x="{x:.0f}" y="{y - 9}" width="18" height="10" fill="{BAND_FILL}"/>')
        out.append(text(x + 22, y, "95% interval", fill=INK))
    return out
