"""The report's one pass over the surveys of a period, counted in two grouping sets: the
counting grid of :mod:`reports.tally` (state, score, open window, delivery receipt and the
segment keys) and the covariate patterns of the non-response adjustment (outcome, score band,
channel, category, country, arm, repeat buyer, days from anchor to send, order value step, and
the ``--by`` key). PostgreSQL hashes both sets in one scan (``GROUPING SETS``); SQLite, which
has none, runs the two ``GROUP BY`` statements.

The model's two numeric covariates are coarse by specification, so that invitees share rows:

- ``days_anchor_to_send``: whole days from the anchor to the send,
  ``floor((sent_at - anchor_at) / 1 day)`` (the ``delay`` key of the grid), capped at
  :data:`MAX_DAYS_TO_SEND` (``60`` stands for 60 days or more); NULL without an anchor or send
  time (the model imputes the median);
- ``log_order_total``: ``ln(1 + max(order total, 0))`` rounded to the nearest multiple of
  :data:`LOG_TOTAL_STEP` (0.1, steps of about 10% in price). PostgreSQL computes the step in the
  query; SQLite (whose ``ln()`` depends on how it was built) groups by the total in
  cents and the step is taken here, the groups of the same step then merged.

The model rows are the distinct (covariates, outcome, score band) combinations, each with how
many invitees it holds (:class:`CovariateTable`), in an order that depends only on the data, so
a report over the same data is reproducible to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, Integer, case, func, literal_column, select, tuple_
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
    band_expr,
    delay_days_expr,
    delay_label,
    dialect_of,
    segment_expr,
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
    Per pattern: the categorical covariates, ``repeat_buyer``, ``responded``, ``score`` (the
    lowest score of the responder's band, which gives the figures of the responder's own score;
    NaN for non-responders and for a score in no band) and ``segment``, the ``--by`` label
    (None without ``--by``).
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
    """Rows the grouping sets returned (both sets)."""


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


def _open_expr(now: datetime) -> ColumnElement[Any]:
    still_open = Survey.state.in_(OPEN_VALUES) & (
        Survey.closes_at.is_(None) | (Survey.closes_at > now)
    )
    return case((still_open, 1), else_=0)


def _grid_columns(dialect: str, now: datetime, keys: Sequence[str]) -> list[ColumnElement[Any]]:
    """The counting grid: state, score, open window, delivery receipt, then ``keys``."""
    return [
        Survey.__table__.c.state,
        Survey.__table__.c.score,
        _open_expr(now),
        case((Survey.delivered_at.is_not(None), 1), else_=0),
        *(segment_expr(dialect, k) for k in keys),
    ]


def _model_columns(
    dialect: str, now: datetime, bands: NpsBands, by: str | None
) -> list[ColumnElement[Any]]:
    """The model's rows: outcome (1 answered, 0 a final non-response, NULL not in the model),
    the responder's score band, the covariates (see :data:`_MODEL`), then the ``--by`` key when
    it is not a covariate. Every figure of the adjustment depends on a score only through its
    band's value (+100 / 0 / -100), so responders are grouped by band, not by score."""
    outcome = case(
        (Survey.state.in_(ANSWERED_VALUES), 1),
        (Survey.state.in_(INVITED_VALUES) & (_open_expr(now) == 0), 0),
        else_=None,
    )
    delay = delay_days_expr(dialect)
    columns: list[ColumnElement[Any]] = [
        outcome,
        band_expr(bands),
        Survey.__table__.c.channel,
        func.coalesce(Order.category, UNKNOWN),
        func.coalesce(Order.country, UNKNOWN),
        func.coalesce(Survey.arm, NO_ARM),
        case((func.coalesce(Order.previous_orders, 0) > 0, 1), else_=0),
        case((delay > MAX_DAYS_TO_SEND, MAX_DAYS_TO_SEND), else_=delay),
        _total_column(dialect),
    ]
    if by is not None and by not in _MODEL:
        columns.append(segment_expr(dialect, by))
    return columns


# Positions in a model row (see _model_columns).
_MODEL: Final = {"channel": 2, "category": 3, "country": 4, "arm": 5}
_REPEAT, _DAYS, _TOTAL = 6, 7, 8


def fetch_patterns(
    session: Session,
    period: Period,
    now: datetime,
    bands: NpsBands,
    keys: Sequence[str],
    by: str | None = None,
) -> SurveyPatterns:
    """The grid over ``keys`` (segment keys, as :func:`reports.query.survey_grid`) and the
    covariate table with ``by`` as its segment, from one scan of the surveys of ``period``
    (``GROUPING SETS`` on PostgreSQL; two ``GROUP BY`` statements elsewhere)."""
    dialect = dialect_of(session)
    grid_cols = [c.label(f"g{i}") for i, c in enumerate(_grid_columns(dialect, now, keys))]
    model_cols = [c.label(f"m{i}") for i, c in enumerate(_model_columns(dialect, now, bands, by))]
    base = select().select_from(Survey).join(Order, Order.id == Survey.order_id)
    base = base.where(period.condition())
    grid_rows: list[Any]
    model_rows: list[Any]
    if dialect == "postgresql":
        stmt = base.add_columns(
            func.grouping(model_cols[0].element), *grid_cols, *model_cols, func.count()
        ).group_by(
            func.grouping_sets(
                tuple_(*(c.element for c in grid_cols)),
                tuple_(*(c.element for c in model_cols)),
            )
        )
        rows = session.execute(stmt).all()
        width = len(grid_cols)
        grid_rows = [(*r[1 : 1 + width], r[-1]) for r in rows if r[0]]
        model_rows = [r[1 + width :] for r in rows if not r[0]]
    else:
        grid_rows = list(
            session.execute(base.add_columns(*grid_cols, func.count()).group_by(*grid_cols))
        )
        model_rows = list(
            session.execute(base.add_columns(*model_cols, func.count()).group_by(*model_cols))
        )
    grid = _grid(grid_rows, keys, bands)
    table = _covariates(model_rows, by, bands, cents=dialect != "postgresql")
    return SurveyPatterns(grid, table, len(grid_rows) + len(model_rows))


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


def _grid(rows: Sequence[Any], keys: Sequence[str], bands: NpsBands) -> list[GridRow]:
    counts: dict[tuple[tuple[str, ...], str, str | None, bool, bool], int] = {}
    for row in rows:
        state = str(row[0])
        labels = tuple(
            delay_label(row[4 + i], state in _INVITED) if k == "delay" else str(row[4 + i])
            for i, k in enumerate(keys)
        )
        cell = (labels, state, _band(state, row[1], bands), bool(row[2]), bool(row[3]))
        counts[cell] = counts.get(cell, 0) + int(row[-1])
    return [GridRow(*cell, n=n) for cell, n in counts.items()]


def _segment(row: Sequence[Any], by: str) -> str:
    if by in _MODEL:
        return str(row[_MODEL[by]])
    if by == "delay":
        return delay_label(row[_TOTAL + 1], True)
    return str(row[_TOTAL + 1])


def _covariates(
    rows: Sequence[Any], by: str | None, bands: NpsBands, cents: bool
) -> CovariateTable:
    band_score = {
        "promoter": float(bands.promoter[0]),
        "passive": float(bands.passive[0]),
        "detractor": float(bands.detractor[0]),
    }
    counts: dict[tuple[tuple[Any, ...], int, int | None], int] = {}
    for row in rows:
        if row[0] is None:
            continue  # not invited, or the response window is still open
        key = (
            *(str(row[i]) for i in _MODEL.values()),
            float(row[_REPEAT]),
            bool(row[0]),
            band_score.get(row[1]) if row[0] else None,
            "" if by is None else _segment(row, by),
        )
        total = int(row[_TOTAL] or 0)
        step = log_total_step(total / 100) if cents else total
        cell = (key, step, None if row[_DAYS] is None else int(row[_DAYS]))
        counts[cell] = counts.get(cell, 0) + int(row[-1])
    # Patterns numbered in sorted order and rows sorted by pattern, days (missing first) and
    # step, so that the table's order depends on the data alone.
    patterns = {k: i for i, k in enumerate(sorted({c[0] for c in counts}, key=_pattern_order))}
    cells = sorted(counts, key=lambda c: (patterns[c[0]], c[2] is not None, c[2] or 0, c[1]))
    keys = list(patterns)

    def column(i: int) -> StrArray:
        return np.array([k[i] for k in keys], dtype=np.str_).reshape(len(keys))

    return CovariateTable(
        pattern=np.array([patterns[c[0]] for c in cells], dtype=np.intp),
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


def _pattern_order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A pattern's sort key: no score (non-responders) as -1."""
    return (*key[:6], -1.0 if key[6] is None else key[6], key[7])
