"""The value types of the operator config and what every section shares.

- Durations: strings of whole units in the order w, d, h, m, s: ``"90s"``, ``"15m"``, ``"6h"``,
  ``"3d"``, ``"1w"``, also ``"1d12h"``. No sign, no fractions, lowercase units
  (:func:`parse_duration`, :func:`format_duration`, :data:`Duration`, :data:`PositiveDuration`).
- Clock times (``"20:00"``), amounts (``"10.50"``) and IANA time zone names.
- The literals used across sections (:class:`ChannelName`, :data:`Weekday`, :data:`AnchorKind`).
- :class:`ConfigModel`, the frozen base of every section, and :func:`cross_field_error`, how a
  section reports problems that span several of its keys.
"""

from __future__ import annotations

import enum
import re
from datetime import time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, PlainSerializer
from pydantic_core import PydanticCustomError

__all__ = [
    "WEEKDAYS",
    "Amount",
    "AnchorKind",
    "ChannelName",
    "Clock",
    "ConfigModel",
    "Duration",
    "PositiveDuration",
    "Weekday",
    "cross_field_error",
    "format_clock",
    "format_duration",
    "parse_duration",
    "strip_nonempty",
    "validate_zone",
]


AnchorKind = Literal["purchase", "fulfilled", "delivered"]


class ChannelName(enum.StrEnum):
    """The two channels a survey goes by; the one type for them everywhere (a plain string
    compares equal to its member, so TOML values and database columns need no conversion)."""

    email = "email"
    sms = "sms"


Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# --------------------------------------------------------------------------------------------
# Durations
# --------------------------------------------------------------------------------------------

_DURATION_HINT = "use 90s, 15m, 6h or 3d"
_DURATION_RE = re.compile(
    r"^(?:(?P<w>\d+)w)?(?:(?P<d>\d+)d)?(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$"
)
_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"6h"``, ``"3d"``, ``"1w"``, ``"1d12h"`` -> timedelta.

    Raises ``ValueError`` with a message an operator can act on.
    """
    stripped = text.strip()
    if stripped.startswith("-"):
        raise ValueError(f"invalid duration {text!r}: must not be negative ({_DURATION_HINT})")
    match = _DURATION_RE.match(stripped)
    if not stripped or match is None:
        raise ValueError(f"invalid duration {text!r} ({_DURATION_HINT})")
    seconds = sum(int(n) * _UNIT_SECONDS[unit] for unit, n in match.groupdict().items() if n)
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise ValueError(f"invalid duration {text!r}: too long") from None


def format_duration(value: timedelta) -> str:
    """The canonical spelling of a duration: the largest of d/h/m/s that divides it exactly."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _validate_duration(value: object) -> timedelta:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise PydanticCustomError("duration", "invalid duration: must not be negative")
        if value.microseconds:
            raise PydanticCustomError("duration", "invalid duration: whole seconds only")
        return value
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise PydanticCustomError("duration", str(exc)) from None
    raise PydanticCustomError(
        "duration",
        "invalid duration {value} (a quoted string; {hint})",
        {"value": repr(value), "hint": _DURATION_HINT},
    )


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise PydanticCustomError("duration", "must be longer than 0s")
    return value


Duration = Annotated[
    timedelta,
    BeforeValidator(_validate_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
]
"""A non-negative whole-second duration, read from ``"90s"`` / ``"15m"`` / ``"6h"`` / ``"3d"``."""

PositiveDuration = Annotated[Duration, AfterValidator(_positive)]

# --------------------------------------------------------------------------------------------
# Small value types
# --------------------------------------------------------------------------------------------

_CLOCK_RE = re.compile(r"^(\d{1,2}):(\d{2})$")


def _validate_clock(value: object) -> time:
    if isinstance(value, time):  # a TOML local time: start = 20:00:00
        if value.tzinfo is not None:
            raise PydanticCustomError("clock", "a local time without an offset")
        return value.replace(microsecond=0)
    if isinstance(value, str):
        match = _CLOCK_RE.match(value.strip())
        if match is not None:
            hour, minute = int(match[1]), int(match[2])
            if hour < 24 and minute < 60:
                return time(hour, minute)
    raise PydanticCustomError(
        "clock", "invalid time {value} (use HH:MM, 00:00 to 23:59)", {"value": repr(value)}
    )


def format_clock(value: time) -> str:
    return value.strftime("%H:%M:%S" if value.second else "%H:%M")


Clock = Annotated[
    time,
    BeforeValidator(_validate_clock),
    PlainSerializer(format_clock, return_type=str, when_used="json"),
]


def _validate_amount(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise PydanticCustomError(
            "amount",
            'invalid amount {value} (use a decimal string like "10.50")',
            {"value": repr(value)},
        )
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise PydanticCustomError(
            "amount",
            'invalid amount {value} (use a decimal string like "10.50")',
            {"value": repr(value)},
        ) from None
    if not amount.is_finite() or amount < 0:
        raise PydanticCustomError("amount", "must be a finite amount, 0 or more")
    return amount


def _format_amount(value: Decimal) -> str:
    return format((value + 0).normalize(), "f")


Amount = Annotated[
    Decimal,
    BeforeValidator(_validate_amount),
    PlainSerializer(_format_amount, return_type=str, when_used="json"),
]


def validate_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise PydanticCustomError(
            "timezone",
            "unknown time zone {value} (use an IANA name like Europe/Berlin)",
            {"value": repr(value)},
        ) from None
    return value


def strip_nonempty(value: str) -> str:
    """A string without surrounding blanks, which must not be empty."""
    value = value.strip()
    if not value:
        raise PydanticCustomError("empty", "must not be empty")
    return value


def cross_field_error(problems: list[tuple[str, str]]) -> PydanticCustomError:
    """An error carrying ``(relative key path, reason)`` problems; ``config.loading``
    reports each one under its full key path."""
    summary = "; ".join(f"{path}: {reason}" if path else reason for path, reason in problems)
    return PydanticCustomError(
        "cross_field", "{summary}", {"summary": summary, "problems": [list(p) for p in problems]}
    )


class ConfigModel(BaseModel):
    """The base of every config section: frozen, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")
