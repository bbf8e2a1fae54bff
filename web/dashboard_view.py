"""What the dashboard says in words: number formats, the interpretation band of an NPS, the
comparison with the operator's benchmark, and the "responders differ most on" sentence, which
ranks the covariates by their largest absolute standardised difference (SMD)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

# (upper bound, label, css class): below 0, 0-30, 30-50, 50-70, above 70.
INTERPRETATION: Final[tuple[tuple[float, str, str], ...]] = (
    (0.0, "below 0: more detractors than promoters", "band-neg"),
    (30.0, "0 to 30: good", "band-good"),
    (50.0, "30 to 50: very good", "band-vgood"),
    (70.0, "50 to 70: excellent", "band-excellent"),
    (float("inf"), "above 70: world class", "band-world"),
)

READABLE: Final[dict[str, str]] = {
    "channel": "channel",
    "category": "product category",
    "log_order_total": "order value",
    "repeat_buyer": "repeat buyers",
    "country": "country",
    "arm": "delay arm",
    "days_anchor_to_send": "whole days from the anchor to the invitation",
}


DASH: Final = "\u2013"  # an en dash: "no value"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(value: Any, digits: int = 1) -> str:
    return DASH if not isinstance(value, int | float) else f"{100 * value:.{digits}f}%"


def signed(value: Any, digits: int = 1) -> str:
    return DASH if not isinstance(value, int | float) else f"{value:+.{digits}f}"


def interval(pair: Sequence[float | None] | None, digits: int = 1, percent: bool = False) -> str:
    """``"12.3 to 45.6"``, or an empty string when undefined (never "- to -")."""
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    if percent:
        return f"{100 * pair[0]:.{digits}f}% to {100 * pair[1]:.{digits}f}%"
    return f"{pair[0]:.{digits}f} to {pair[1]:.{digits}f}"


@dataclass(frozen=True, slots=True)
class Interpretation:
    label: str
    css: str


def interpret(nps: float | None) -> Interpretation | None:
    if nps is None:
        return None
    for upper, label, css in INTERPRETATION:
        if nps < upper:
            return Interpretation(label, css)
    return None  # pragma: no cover - the last bound is infinite


def versus_benchmark(nps: float | None, benchmark: float | None) -> str | None:
    """``"4.2 above your benchmark of 30"``, or None without either."""
    if nps is None or benchmark is None:
        return None
    diff = nps - benchmark
    if abs(diff) < 0.05:
        return f"level with your benchmark of {benchmark:g}"
    side = "above" if diff > 0 else "below"
    return f"{abs(diff):.1f} {side} your benchmark of {benchmark:g}"


def _covariate(name: str) -> str:
    base, _, level = name.partition("=")
    return base if level else name


def ranked_differences(smd: Sequence[Mapping[str, Any]]) -> list[tuple[str, float]]:
    """Covariates by their largest |SMD| over their levels, largest first, flagged ones only.

    ``channel=sms`` and ``channel=email`` are one covariate, ``channel``."""
    best: dict[str, float] = {}
    for row in smd:
        value = row.get("smd")
        if not row.get("flagged") or not isinstance(value, int | float):
            continue
        name = _covariate(str(row.get("covariate", "")))
        best[name] = max(best.get(name, 0.0), abs(float(value)))
    return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))


def differs_sentence(smd: Sequence[Mapping[str, Any]], limit: int = 3) -> str | None:
    """ "Those who answered differ most from those who did not on repeat buyers (SMD 1.35), ...".
    None when no covariate is flagged."""
    ranked = ranked_differences(smd)[:limit]
    if not ranked:
        return None
    parts = [f"{READABLE.get(name, name)} ({value:.2f})" for name, value in ranked]
    listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return (
        f"Those who answered differ most from those who did not on {listed} "
        "(standardised differences; above 0.1 matters)."
    )


def adjustment_sentence(adjusted: Mapping[str, Any] | None, raw: float | None) -> str | None:
    """Whether re-weighting for who answered moves the NPS beyond its sampling error."""
    if not adjusted or raw is None or adjusted.get("nps") is None:
        return None
    value = float(adjusted["nps"])
    if not adjusted.get("differs_from_raw"):
        return (
            f"Re-weighted for who answered, the NPS is {value:.1f}: within the sampling error "
            f"of the {raw:.1f} of those who answered, so non-response shows no sign of bias."
        )
    direction = "overstates" if raw > value else "understates"
    return (
        f"The NPS of those who answered ({raw:.1f}) likely {direction} the NPS of everyone "
        f"invited: re-weighted for who answered it is {value:.1f}."
    )
