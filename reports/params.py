"""The report's parameters and their checks, kept free of heavy imports so that the command
line can build its parser without loading the database and statistics stack."""

from __future__ import annotations

from datetime import date
from typing import Final, Literal, get_args

SegmentBy = Literal["channel", "category", "arm", "delay", "country", "week"]
SEGMENT_KEYS: Final[tuple[str, ...]] = get_args(SegmentBy)


class ReportError(ValueError):
    """A bad report parameter (a date, a segment, an empty period)."""


def parse_date(value: str | date | None, name: str) -> date | None:
    """``YYYY-MM-DD`` (a UTC day) or None; ReportError naming the parameter otherwise."""
    if value is None or isinstance(value, date):
        return value
    text = value.strip()
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{name}: {value!r} is not a date; expected YYYY-MM-DD") from None


def parse_by(value: str | None) -> str | None:
    """A segment key of :data:`SEGMENT_KEYS`, or None."""
    if value is None or value == "":
        return None
    if value not in SEGMENT_KEYS:
        raise ReportError(
            f"by: {value!r} is not a segment; choose one of {', '.join(SEGMENT_KEYS)}"
        )
    return value
