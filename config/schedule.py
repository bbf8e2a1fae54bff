"""``[schedule]``: when a survey goes out: the anchor event and delay, quiet hours, send days,
jitter, the default time zone, per-order rules and the arms of a delay experiment."""

from __future__ import annotations

import re
from datetime import time, timedelta
from typing import Annotated, Self

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from config.values import (
    WEEKDAYS,
    AnchorKind,
    ChannelName,
    Clock,
    ConfigModel,
    Duration,
    PositiveDuration,
    Weekday,
    cross_field_error,
    strip_nonempty,
    validate_zone,
)

__all__ = ["Arm", "QuietHours", "Rule", "RuleMatch", "ScheduleConfig"]


class QuietHours(ConfigModel):
    """Local hours with no sending, ``[start, end)``; wraps midnight when ``start > end``;
    ``start == end`` means no quiet hours."""

    start: Clock = time(20, 0)
    end: Clock = time(9, 0)

    @property
    def enabled(self) -> bool:
        return self.start != self.end

    @property
    def wraps_midnight(self) -> bool:
        return self.start > self.end

    def contains(self, moment: time) -> bool:
        """Whether a local wall-clock time falls in the quiet hours."""
        moment = moment.replace(tzinfo=None)
        if not self.enabled:
            return False
        if self.wraps_midnight:
            return moment >= self.start or moment < self.end
        return self.start <= moment < self.end


def _as_str_tuple(value: object) -> object:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple) and not value:
        raise PydanticCustomError("empty", "must not be empty")
    return value


_MatchValues = Annotated[
    tuple[Annotated[str, AfterValidator(strip_nonempty)], ...], BeforeValidator(_as_str_tuple)
]


def _upper_countries(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    for code in values:
        if not re.fullmatch(r"[A-Za-z]{2}", code):
            raise PydanticCustomError(
                "country",
                "invalid country {value} (use an ISO 3166 code like DE)",
                {"value": repr(code)},
            )
    return tuple(code.upper() for code in values)


class RuleMatch(ConfigModel):
    """What a rule matches; each key is a value or a list of values (any of them). Every key given
    must match; comparisons ignore case. A survey attribute that is unknown matches nothing."""

    category: _MatchValues | None = None
    channel: tuple[ChannelName, ...] | None = None
    country: Annotated[_MatchValues | None, AfterValidator(_upper_countries)] = None
    sales_channel: _MatchValues | None = None

    @field_validator("channel", mode="before")
    @classmethod
    def _channel_list(cls, value: object) -> object:
        return _as_str_tuple(value)

    @model_validator(mode="after")
    def _not_empty(self) -> Self:
        if all(getattr(self, key) is None for key in type(self).model_fields):
            raise PydanticCustomError(
                "empty_match",
                "needs at least one of category, channel, country, sales_channel",
            )
        return self

    def matches(
        self,
        *,
        category: str | None,
        channel: str | None,
        country: str | None,
        sales_channel: str | None,
    ) -> bool:
        given = {
            "category": category,
            "channel": channel,
            "country": country,
            "sales_channel": sales_channel,
        }
        for key, actual in given.items():
            wanted: tuple[str, ...] | None = getattr(self, key)
            if wanted is None:
                continue
            if actual is None or actual.strip().casefold() not in {w.casefold() for w in wanted}:
                return False
        return True


class Rule(ConfigModel):
    match: RuleMatch
    delay: Duration


class Arm(ConfigModel):
    """One arm of a randomised delay experiment."""

    #: Stored with each survey of the arm, in a column that holds 64 characters.
    name: Annotated[str, Field(max_length=64), AfterValidator(strip_nonempty)]
    delay: Duration
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)


def _send_days(value: object) -> object:
    if isinstance(value, list | tuple):
        days = [d.strip().lower() if isinstance(d, str) else d for d in value]
        if not days:
            raise PydanticCustomError("empty", "must name at least one day")
        seen = [d for i, d in enumerate(days) if d in days[:i]]
        if seen:
            raise PydanticCustomError(
                "duplicate", "{value} is listed twice", {"value": repr(seen[0])}
            )
        known = [d for d in days if d in WEEKDAYS]
        if len(known) == len(days):
            return tuple(d for d in WEEKDAYS if d in days)  # canonical week order
        return tuple(days)  # let the Literal check name the bad day
    return value


class ScheduleConfig(ConfigModel):
    anchor: AnchorKind = "delivered"
    anchor_timeout: PositiveDuration = timedelta(days=10)
    delay: Duration = timedelta(days=3)
    quiet_hours: QuietHours = QuietHours()
    send_days: Annotated[tuple[Weekday, ...], BeforeValidator(_send_days)] = (
        "mon",
        "tue",
        "wed",
        "thu",
        "fri",
        "sat",
    )
    jitter: Duration = timedelta(hours=2)
    default_timezone: Annotated[str, AfterValidator(validate_zone)] = "Europe/Berlin"
    rules: tuple[Rule, ...] = ()
    arms: tuple[Arm, ...] = ()

    @model_validator(mode="after")
    def _unique_arms(self) -> Self:
        problems: list[tuple[str, str]] = []
        first: dict[str, int] = {}
        for index, arm in enumerate(self.arms):
            if arm.name in first:
                problems.append(
                    (
                        f"arms[{index}].name",
                        f"duplicate arm name {arm.name!r} (also arms[{first[arm.name]}])",
                    )
                )
            first.setdefault(arm.name, index)
        if problems:
            raise cross_field_error(problems)
        return self

    @property
    def weekdays(self) -> frozenset[int]:
        """Send days as ``date.weekday()`` numbers (Monday = 0)."""
        return frozenset(WEEKDAYS.index(day) for day in self.send_days)
