"""The population of a filtered report view: a purchase period plus an optional channel and
category, as the dashboard and ``GET /v1/reports/nps?channel=&category=`` take them.

:class:`FilteredPeriod` is a :class:`reports.query.Period` whose SQL condition also holds the
channel and category, so every query of the report that filters on the period (purchases, skips,
the survey aggregates, the covariate fetch) sees the same population. The channel is a survey's:
a purchase counts in the ``sms`` view when its survey went by SMS (a skipped purchase has no
channel, so a channel view's funnel starts at the surveys). ``category`` ``unknown`` is a
purchase without a category, as in the report's segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Final

from sqlalchemy import ColumnElement, and_, exists, select
from sqlalchemy.orm import aliased

from models.orders import Order
from models.surveys import Survey
from reports.params import ReportError
from reports.query import UNKNOWN, Period

CHANNELS: Final[tuple[str, ...]] = ("email", "sms")
BANDS: Final[tuple[str, ...]] = ("detractor", "passive", "promoter")
MAX_CATEGORY = 64  # the width of orders.category


def parse_channel(value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    if value not in CHANNELS:
        raise ReportError(f"channel: {value!r} is not a channel; choose one of email, sms")
    return value


def parse_category(value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    if len(value) > MAX_CATEGORY:
        raise ReportError(f"category: longer than {MAX_CATEGORY} characters")
    return value


def parse_band(value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    if value not in BANDS:
        raise ReportError(f"band: {value!r} is not a band; choose one of {', '.join(BANDS)}")
    return value


@dataclass(frozen=True, slots=True)
class FilteredPeriod(Period):
    """Purchases of the period, of one survey channel and/or one order category."""

    channel: str | None = None
    category: str | None = None

    @property
    def filtered(self) -> bool:
        return self.channel is not None or self.category is not None

    def condition(self) -> ColumnElement[bool]:
        parts = [Period.condition(self)]
        if self.category == UNKNOWN:
            parts.append(Order.category.is_(None))
        elif self.category is not None:
            parts.append(Order.category == self.category)
        if self.channel is not None:
            other = aliased(Survey)
            parts.append(
                exists(
                    select(other.id).where(
                        other.order_id == Order.id, other.channel == self.channel
                    )
                )
            )
        return and_(*parts)

    def filters(self) -> dict[str, str | None]:
        return {"channel": self.channel, "category": self.category}

    def with_dates(self, since: date | None, until: date | None) -> FilteredPeriod:
        return FilteredPeriod(since, until, self.channel, self.category)


def make_view(
    since: date | None,
    until: date | None,
    channel: str | None = None,
    category: str | None = None,
) -> FilteredPeriod:
    """A :class:`FilteredPeriod`, ReportError when since is not before until."""
    try:
        return FilteredPeriod(since, until, channel, category)
    except ValueError as exc:
        raise ReportError(f"period: {exc}") from None
