"""The report's one pass over the surveys of a period: a ``GROUP BY`` of the surveys by their
discrete keys (state, score, open window, delivery receipt, channel, category, country, arm,
repeat buyer, days from anchor to send, order value step, and the ``--by`` key), turned into the
counting grid of :mod:`reports.tally` and the covariate patterns of the non-response adjustment.

The model's two numeric covariates are coarse by specification, so that invitees share rows:

- ``days_anchor_to_send``: whole days from the anchor to the send,
  ``floor((sent_at - anchor_at) / 1 day)`` (the ``delay`` key of the grid), capped at
  :data:`MAX_DAYS_TO_SEND` (``60`` stands for 60 days or more); NULL without an anchor or send
  time (the model imputes the median);
- ``log_order_total``: ``ln(1 + max(order total, 0))`` rounded to the nearest multiple of
  :data:`LOG_TOTAL_STEP` (0.1, steps of about 10% in price). PostgreSQL computes the step in the
  ``GROUP BY``; SQLite (whose ``ln()`` depends on how it was built) groups by the total in
  cents and the step is taken here, the groups of the same step then merged.

The model rows are the distinct (covariates, outcome, score) combinations, each with how many
invitees it holds (:class:`CovariateTable`), in an order that depends only on the data, so a
report over the same data is reproducible to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, Integer, case, func, literal_column, select
from sqlalchemy.orm import Session

from models.orders import Order
from models.surveys import Survey
from reports.query import (
    ANSWERED_VALUES,
    INVITED_VALUES,
    NO_ARM,
    OPEN_VALUES,
    UNKNOWN,
    GridRow,
    Period,
    delay_days_expr,
    delay_label,
    dialect_of,
    iso_week_expr,
)
from reports.stats.nps import NpsBands

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
StrArray = npt.NDArray[np.str_]


COVARIATE_NAMES: Final = (
    "channel",
    "category",
    "log_order_total",
    "repeat_buyer",
    "country",
    "arm",
    "days_anchor_to_send",
)
CATEGORICAL: Final = ("channel", "category", "country", "arm")

MAX_DAYS_TO_SEND: Final = 60
"""``days_anchor_to_send`` is capped here: the last value stands for this many days or more."""
LOG_TOTAL_STEP_PER_UNIT: Final = 10
LOG_TOTAL_STEP: Final = 1 / LOG_TOTAL_STEP_PER_UNIT
"""``log_order_total`` is ``ln(1 + total)`` rounded to a multiple of this (0.1)."""


def log_total_step(total: float) -> int:
    """The order value's step: ``round(ln(1 + max(total, 0)) / LOG_TOTAL_STEP)``."""
    return round(math.log1p(max(total, 0.0)) * LOG_TOTAL_STEP_PER_UNIT)


_ANSWERED = frozenset(ANSWERED_VALUES)
_INVITED = frozenset(INVITED_VALUES)


@dataclass(frozen=True, slots=True)
class CovariateTable:
    """The invitations with a final outcome (open ones are left out) as distinct rows.

    A row is one combination of covariates, outcome and score; ``count`` says how many
    invitees it holds. Per row: ``pattern`` (index into the per-pattern arrays),
    ``log_order_total`` (a multiple of :data:`LOG_TOTAL_STEP`), ``days_anchor_to_send`` (whole
    days, capped at :data:`MAX_DAYS_TO_SEND`; NaN without an anchor or send time), ``count``.
    Per pattern: the categorical covariates, ``repeat_buyer``, ``responded``, ``score`` (NaN
    for non-responders) and ``segment``, the ``--by`` label (None without ``--by``).
    """

    pattern: IntArray
    log_order_total: FloatArray
    days_anchor_to_send: FloatArray
    count: FloatArray
    channel: StrArray
    category: StrArray
    country: StrArray
    arm: StrArray
    repeat_buyer: FloatArray
    responded: BoolArray
    score: FloatArray
    segment: StrArray | None

    @property
    def n(self) -> int:
        """Invitees in the table."""
        return int(self.count.sum())

    @property
    def rows(self) -> int:
        return int(self.pattern.size)

    def in_segment(self, key: str) -> BoolArray:
        """Per row: whether it belongs to segment ``key``."""
        if self.segment is None:
            raise ValueError("the table was built without a segment")
        mask: BoolArray = (self.segment == key)[self.pattern]
        return mask


@dataclass(frozen=True, slots=True)
class SurveyPatterns:
    """The grid of :func:`reports.query.survey_grid` over ``keys`` and the covariate table."""

    grid: list[GridRow]
    covariates: CovariateTable
    groups: int
    """Rows the ``GROUP BY`` returned."""


# Columns of the GROUP BY, in order: the order value's step (or total in cents, see
# :func:`_total_column`) follows; the ``--by`` week key is appended when asked for.
_KEYS: Final = (
    "state",
    "score",
    "is_open",
    "delivered",
    "channel",
    "category",
    "country",
    "arm",
    "repeat_buyer",
    "delay",
)
_TOTAL = len(_KEYS)


def _total_column(dialect: str) -> ColumnElement[Any]:
    """PostgreSQL: the order value's step (see :func:`log_total_step`). SQLite: the total in
    cents, whose step :func:`_covariates` takes (``ln()`` is missing from some SQLite builds)."""
    if dialect == "postgresql":
        sql = (
            "CAST(ROUND(LN(1 + GREATEST(CAST(COALESCE(orders.total_amount, 0) AS DOUBLE PRECISION)"
            f", 0)) * {LOG_TOTAL_STEP_PER_UNIT}) AS INTEGER)"
        )
    else:
        sql = "CAST(ROUND(MAX(COALESCE(orders.total_amount, 0), 0) * 100) AS INTEGER)"
    return literal_column(sql, Integer)


def _key_columns(dialect: str, now: datetime, week: bool) -> list[ColumnElement[Any]]:
    is_open = case(
        (
            Survey.state.in_(OPEN_VALUES) & (Survey.closes_at.is_(None) | (Survey.closes_at > now)),
            1,
        ),
        else_=0,
    )
    columns: list[ColumnElement[Any]] = [
        Survey.__table__.c.state,
        Survey.__table__.c.score,
        is_open,
        case((Survey.delivered_at.is_not(None), 1), else_=0),
        Survey.__table__.c.channel,
        func.coalesce(Order.category, UNKNOWN),
        func.coalesce(Order.country, UNKNOWN),
        func.coalesce(Survey.arm, NO_ARM),
        case((func.coalesce(Order.previous_orders, 0) > 0, 1), else_=0),
        delay_days_expr(dialect),
        _total_column(dialect),
    ]
    if week:
        columns.append(iso_week_expr(dialect))
    return [col.label(f"k{i}") for i, col in enumerate(columns)]


def fetch_patterns(
    session: Session,
    period: Period,
    now: datetime,
    bands: NpsBands,
    keys: Sequence[str],
    by: str | None = None,
) -> SurveyPatterns:
    """One ``GROUP BY`` over the surveys of ``period``: the grid over ``keys`` (segment keys,
    as :func:`reports.query.survey_grid`) and the covariate table with ``by`` as its segment."""
    dialect = dialect_of(session)
    key_cols = _key_columns(dialect, now, "week" in (by, *keys))
    stmt = (
        select(*key_cols, func.count())
        .select_from(Survey)
        .join(Order, Order.id == Survey.order_id)
        .where(period.condition())
        .group_by(*key_cols)
    )
    rows: list[Any] = list(session.execute(stmt).all())
    width = len(key_cols)
    # Sorted by their keys, so that the table's order depends on the data alone.
    rows.sort(key=lambda row: tuple((v is None, v) for v in row[:width]))
    grid = _grid(rows, keys, bands, width)
    table = _covariates(rows, by, width, cents=dialect != "postgresql")
    return SurveyPatterns(grid, table, len(rows))


def _band(state: str, score: int | None, bands: NpsBands) -> str | None:
    if state not in _ANSWERED or score is None:
        return None
    for name, (low, high) in (
        ("promoter", bands.promoter),
        ("passive", bands.passive),
        ("detractor", bands.detractor),
    ):
        if low <= score <= high:
            return name
    return None


def _label(row: Sequence[Any], key: str, width: int) -> str:
    """A segment label of a grouped row (see :func:`reports.query.segment_expr`)."""
    if key == "delay":
        return delay_label(row[9], str(row[0]) in _INVITED)
    if key == "week":
        return str(row[width - 1])
    index = {"channel": 4, "category": 5, "country": 6, "arm": 7}[key]
    return str(row[index])


def _grid(rows: Sequence[Any], keys: Sequence[str], bands: NpsBands, width: int) -> list[GridRow]:
    counts: dict[tuple[tuple[str, ...], str, str | None, bool, bool], int] = {}
    for row in rows:
        state = str(row[0])
        cell = (
            tuple(_label(row, k, width) for k in keys),
            state,
            _band(state, row[1], bands),
            bool(row[2]),
            bool(row[3]),
        )
        counts[cell] = counts.get(cell, 0) + int(row[width])
    return [GridRow(*cell, n=n) for cell, n in counts.items()]


def _covariates(rows: Sequence[Any], by: str | None, width: int, cents: bool) -> CovariateTable:
    patterns: dict[tuple[Any, ...], int] = {}
    counts: dict[tuple[int, int, int | None], int] = {}
    for row in rows:
        state = str(row[0])
        if state not in _INVITED or row[2]:
            continue  # not invited, or the response window is still open
        responded = state in _ANSWERED
        key = (
            *(str(row[i]) for i in (4, 5, 6, 7)),
            float(row[8]),
            responded,
            None if not responded or row[1] is None else float(row[1]),
            None if by is None else _label(row, by, width),
        )
        total = int(row[_TOTAL] or 0)
        step = log_total_step(total / 100) if cents else total
        days = None if row[9] is None else min(int(row[9]), MAX_DAYS_TO_SEND)
        cell = (patterns.setdefault(key, len(patterns)), step, days)
        counts[cell] = counts.get(cell, 0) + int(row[width])
    # In the order of pattern, days (missing first), step: it depends on the data alone.
    cells = sorted(counts, key=lambda c: (c[0], c[2] is not None, c[2] or 0, c[1]))
    keys = list(patterns)

    def column(i: int) -> StrArray:
        return np.array([k[i] for k in keys], dtype=np.str_).reshape(len(keys))

    return CovariateTable(
        pattern=np.array([c[0] for c in cells], dtype=np.intp),
        log_order_total=np.array([c[1] for c in cells], dtype=np.float64) / LOG_TOTAL_STEP_PER_UNIT,
        days_anchor_to_send=np.array(
            [np.nan if c[2] is None else c[2] for c in cells], dtype=np.float64
        ),
        count=np.array([counts[c] for c in cells], dtype=np.float64),
        channel=column(0),
        category=column(1),
        country=column(2),
        arm=column(3),
        repeat_buyer=np.array([k[4] for k in keys], dtype=np.float64),
        responded=np.array([k[5] for k in keys], dtype=np.bool_),
        score=np.array([np.nan if k[6] is None else k[6] for k in keys], dtype=np.float64),
        segment=None if by is None else column(7),
    )
