"""The report's SQL pieces: the period, the segment keys, the dialect-specific expressions,
and the small aggregates (purchases, skip reasons, the grid of a compared period).

Everything that counts is a ``SELECT ... GROUP BY`` (states, score bands, skip reasons, segment
keys), so the database does the counting and Python only sees aggregated rows. The report's
main pass, one scan giving both its counting grid and the propensity model's rows, is
in :mod:`reports.covariates_query`.

Period: ``Order.purchased_at`` in ``[since, until)``, both UTC dates (midnight), either open.

Segment keys (``--by``), the same SQL expression in the aggregation and in the covariate fetch:

- ``channel``: ``surveys.channel``
- ``category``: ``orders.category``, ``"unknown"`` when missing
- ``arm``: ``surveys.arm``, ``"none"`` when the survey was planned without an experiment
- ``country``: ``orders.country``, ``"unknown"`` when missing
- ``delay``: whole days from the anchor to the send, ``floor((sent_at - anchor_at) / 1 day)``,
  labelled ``"3d"``; ``"not_sent"`` for surveys never sent, ``"unknown"`` without an anchor
- ``week``: ISO 8601 week of ``orders.purchased_at`` in UTC, ``"2026-W47"``

The dialect-specific pieces (day arithmetic, ISO weeks) are written once for PostgreSQL and once
for SQLite and checked against each other by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    ColumnElement,
    Integer,
    String,
    and_,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.orm import Session

from models.lifecycle import ANSWERED_STATES, INVITED_STATES, OPEN_STATES
from models.orders import Order
from models.surveys import SkippedPurchase, Survey
from reports.params import SEGMENT_KEYS
from reports.stats.nps import NpsBands

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
StrArray = npt.NDArray[np.str_]

NOT_SENT = "not_sent"
UNKNOWN = "unknown"
NO_ARM = "none"

OPEN_VALUES = [s.value for s in OPEN_STATES]
INVITED_VALUES = [s.value for s in INVITED_STATES]
ANSWERED_VALUES = [s.value for s in ANSWERED_STATES]


# --------------------------------------------------------------------------- period


@dataclass(frozen=True, slots=True)
class Period:
    """Purchases with ``since <= purchased_at < until`` (UTC dates; None = open)."""

    since: date | None = None
    until: date | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError(
                f"since ({self.since.isoformat()}) must be before until ({self.until.isoformat()})"
            )

    @staticmethod
    def _start(day: date | None) -> datetime | None:
        return None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC)

    def condition(self) -> ColumnElement[bool]:
        parts: list[ColumnElement[bool]] = [Order.purchased_at.is_not(None)]
        start, end = self._start(self.since), self._start(self.until)
        if start is not None:
            parts.append(Order.purchased_at >= start)
        if end is not None:
            parts.append(Order.purchased_at < end)
        return and_(*parts)

    def to_dict(self) -> dict[str, str | None]:
        return {
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
        }


# --------------------------------------------------------------------------- dialect pieces


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def delay_days_expr(dialect: str) -> ColumnElement[Any]:
    """Whole days from anchor to send (floor), NULL when either end is missing."""
    if dialect == "postgresql":
        # date_part gives the seconds as a double (EXTRACT a slower numeric); a double holds
        # microseconds exactly at these magnitudes, so the floor is the same.
        sql = (
            "CAST(FLOOR(date_part('epoch', surveys.sent_at - surveys.anchor_at) / 86400) "
            "AS INTEGER)"
        )
    else:
        # julianday has millisecond precision; round the difference to whole milliseconds
        # before the integer floor division (SQLite's integer division truncates toward zero).
        ms = (
            "CAST(ROUND((julianday(surveys.sent_at) - julianday(surveys.anchor_at)) * 86400000)"
            " AS INTEGER)"
        )
        sql = f"(CASE WHEN {ms} >= 0 THEN {ms} / 86400000 ELSE ({ms} - 86399999) / 86400000 END)"
    return literal_column(sql, Integer)


def iso_week_expr(dialect: str) -> ColumnElement[Any]:
    """ISO 8601 week of the purchase in UTC, ``YYYY-Www``."""
    if dialect == "postgresql":
        sql = "to_char(timezone('UTC', orders.purchased_at), 'IYYY-\"W\"IW')"
    else:
        # The ISO week is the one holding the Thursday of the same Monday-to-Sunday week; its
        # year is that Thursday's year and its number (day of year of the Thursday - 1) / 7 + 1.
        thursday = "date(orders.purchased_at, '-3 days', 'weekday 4')"
        sql = (
            f"(strftime('%Y', {thursday}) || '-W' || "
            f"printf('%02d', (CAST(strftime('%j', {thursday}) AS INTEGER) - 1) / 7 + 1))"
        )
    return literal_column(sql, String)


def segment_expr(dialect: str, by: str) -> ColumnElement[Any]:
    """The SQL expression of a segment key (see the module docstring). ``delay`` is an integer
    (NULL when not sent); :func:`delay_label` turns it into the label."""
    if by == "channel":
        return Survey.__table__.c.channel
    if by == "category":
        return func.coalesce(Order.category, UNKNOWN)
    if by == "arm":
        return func.coalesce(Survey.arm, NO_ARM)
    if by == "country":
        return func.coalesce(Order.country, UNKNOWN)
    if by == "delay":
        return delay_days_expr(dialect)
    if by == "week":
        return iso_week_expr(dialect)
    raise ValueError(f"unknown segment {by!r}; choose one of {', '.join(SEGMENT_KEYS)}")


def delay_label(days: object, sent: bool) -> str:
    """``"3d"`` for a whole number of days; ``"not_sent"`` / ``"unknown"`` otherwise."""
    if days is None:
        return UNKNOWN if sent else NOT_SENT
    return f"{int(cast(int, days))}d"


def segment_sort_key(label: str) -> tuple[int, float, str]:
    """Delay labels in numeric order, then everything else alphabetically, placeholders last."""
    if label.endswith("d") and label[:-1].lstrip("-").isdigit():
        return (0, float(label[:-1]), label)
    if label in (NOT_SENT, UNKNOWN, NO_ARM):
        return (2, 0.0, label)
    return (1, 0.0, label)


def band_expr(bands: NpsBands) -> ColumnElement[Any]:
    """``promoter`` / ``passive`` / ``detractor`` for answered surveys, NULL otherwise."""
    answered = Survey.state.in_(ANSWERED_VALUES)
    whens = [
        (and_(answered, Survey.score.between(low, high)), literal(name))
        for name, (low, high) in (
            ("promoter", bands.promoter),
            ("passive", bands.passive),
            ("detractor", bands.detractor),
        )
    ]
    return case(*whens, else_=None)


def open_expr(now: datetime) -> ColumnElement[Any]:
    """1 for an invitation still waiting for its answer (open state, window not closed)."""
    still_open = and_(
        Survey.state.in_(OPEN_VALUES), or_(Survey.closes_at.is_(None), Survey.closes_at > now)
    )
    return case((still_open, 1), else_=0)


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True, slots=True)
class GridRow:
    """Surveys sharing segment keys, state, band, open flag and delivery receipt: how many."""

    keys: tuple[str, ...]
    state: str
    band: str | None
    is_open: bool
    delivered: bool
    n: int


def survey_grid(
    session: Session,
    period: Period,
    keys: Sequence[str],
    bands: NpsBands,
    now: datetime,
) -> list[GridRow]:
    """Surveys of the period counted by (keys..., state, band, open, delivery receipt)."""
    dialect = dialect_of(session)
    key_cols = [segment_expr(dialect, k).label(f"k{i}") for i, k in enumerate(keys)]
    band = band_expr(bands).label("band")
    is_open = open_expr(now).label("is_open")
    delivered = case((Survey.delivered_at.is_not(None), 1), else_=0).label("delivered")
    stmt = (
        select(*key_cols, Survey.state, band, is_open, delivered, func.count().label("n"))
        .select_from(Survey)
        .join(Order, Order.id == Survey.order_id)
        .where(period.condition())
        .group_by(*key_cols, Survey.state, band, is_open, delivered)
    )
    out: list[GridRow] = []
    for row in session.execute(stmt):
        state = str(row.state)
        labels = tuple(
            delay_label(row[i], state in INVITED_VALUES) if k == "delay" else str(row[i])
            for i, k in enumerate(keys)
        )
        out.append(
            GridRow(
                keys=labels,
                state=state,
                band=None if row.band is None else str(row.band),
                is_open=bool(row.is_open),
                delivered=bool(row.delivered),
                n=int(row.n),
            )
        )
    return out


def count_purchases(session: Session, period: Period) -> int:
    """Orders purchased in the period (orders known only from a later event are not counted)."""
    return int(session.scalar(select(func.count(Order.id)).where(period.condition())) or 0)


def skip_reasons(session: Session, period: Period) -> dict[str, int]:
    """Skipped purchases of the period by reason."""
    stmt = (
        select(SkippedPurchase.reason, func.count())
        .join(Order, Order.id == SkippedPurchase.order_id)
        .where(period.condition())
        .group_by(SkippedPurchase.reason)
    )
    return {str(reason): int(n) for reason, n in session.execute(stmt)}
