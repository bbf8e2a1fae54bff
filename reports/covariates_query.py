"""The report's one pass over the surveys of a period: a ``GROUP BY`` of the surveys by their
discrete keys (state, score, open window, delivery receipt, channel, category, country, arm,
repeat buyer, days from anchor to send, and the ``--by`` key), turned into the counting grid of
:mod:`reports.tally` and the covariate patterns of the non-response adjustment.

The adjustment's two continuous covariates, the order total and the fractional days from anchor
to send, cannot be grouped away without changing the model. On PostgreSQL each group carries
them packed (big-endian float8 ``bytea``, one value per survey), so a million invitations cross
the wire as a few thousand rows and land in numpy without a Python object per value; elsewhere
the ``GROUP BY`` also takes the two values, and equal rows arrive counted. Either way the model
rows are the distinct (covariates, outcome, score) combinations, each with how many invitees it
holds (:class:`CovariateTable`), in an order that depends only on the data, so a report over
the same data is reproducible to the bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, Float, case, func, literal_column, select
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
    days_to_send_expr,
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

_ANSWERED = frozenset(ANSWERED_VALUES)
_INVITED = frozenset(INVITED_VALUES)


@dataclass(frozen=True, slots=True)
class CovariateTable:
    """The invitations with a final outcome (open ones are left out) as distinct rows.

    A row is one combination of covariates, outcome and score; ``count`` says how many
    invitees it holds. Per row: ``pattern`` (index into the per-pattern arrays),
    ``order_total``, ``days_anchor_to_send`` (NaN without an anchor or send time), ``count``.
    Per pattern: the categorical covariates, ``repeat_buyer``, ``responded``, ``score`` (NaN
    for non-responders) and ``segment``, the ``--by`` label (None without ``--by``).
    """

    pattern: IntArray
    order_total: FloatArray
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


# Columns of the GROUP BY, in order; the ``--by`` week key is appended when asked for.
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
    *,
    packed: bool | None = None,
) -> SurveyPatterns:
    """One ``GROUP BY`` over the surveys of ``period``: the grid over ``keys`` (segment keys,
    as :func:`reports.query.survey_grid`) and the covariate table with ``by`` as its segment.

    ``packed``: carry the continuous covariates packed per group (the default on PostgreSQL,
    which alone can) or group by them too.
    """
    dialect = dialect_of(session)
    if packed is None:
        packed = dialect == "postgresql"
    key_cols = _key_columns(dialect, now, "week" in (by, *keys))
    total = func.cast(func.coalesce(Order.total_amount, 0), Float)
    days = days_to_send_expr(dialect)
    base = select().select_from(Survey).join(Order, Order.id == Survey.order_id)
    if packed:
        nan: ColumnElement[Any] = literal_column("'NaN'::float8")
        empty: ColumnElement[Any] = literal_column("''::bytea")
        values = [
            func.string_agg(func.float8send(total), empty),
            func.string_agg(func.float8send(func.coalesce(days, nan)), empty),
        ]
        stmt = base.add_columns(*key_cols, func.count(), *values).group_by(*key_cols)
    else:
        stmt = base.add_columns(*key_cols, func.count(), total, days).group_by(
            *key_cols, total, days
        )
    rows: list[Any] = list(session.execute(stmt.where(period.condition())).all())
    width = len(key_cols)
    # Sorted by their keys, so that the table's order depends on the data alone.
    rows.sort(key=lambda row: tuple((v is None, v) for v in row[:width]))
    grid = _grid(rows, keys, bands, width)
    table = _covariates(rows, by, width, packed)
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


def _covariates(rows: Sequence[Any], by: str | None, width: int, packed: bool) -> CovariateTable:
    patterns: dict[tuple[Any, ...], int] = {}
    index: list[int] = []
    sizes: list[int] = []
    totals: list[Any] = []
    days: list[Any] = []
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
        index.append(patterns.setdefault(key, len(patterns)))
        sizes.append(int(row[width]))
        totals.append(row[width + 1])
        days.append(row[width + 2])

    if packed:
        n_values = np.array(sizes, dtype=np.intp)
        pattern = np.repeat(np.array(index, dtype=np.intp), n_values)
        order_total = _unpack(totals, int(n_values.sum()))
        days_to_send = _unpack(days, int(n_values.sum()))
        count = np.ones(pattern.size)
    else:
        pattern = np.array(index, dtype=np.intp)
        order_total = np.array(totals, dtype=np.float64)
        days_to_send = np.array([np.nan if d is None else d for d in days], dtype=np.float64)
        count = np.array(sizes, dtype=np.float64)
    pattern, order_total, days_to_send, count = _distinct(pattern, order_total, days_to_send, count)
    keys = list(patterns)

    def column(i: int) -> StrArray:
        return np.array([k[i] for k in keys], dtype=np.str_).reshape(len(keys))

    return CovariateTable(
        pattern=pattern,
        order_total=order_total,
        days_anchor_to_send=days_to_send,
        count=count,
        channel=column(0),
        category=column(1),
        country=column(2),
        arm=column(3),
        repeat_buyer=np.array([k[4] for k in keys], dtype=np.float64),
        responded=np.array([k[5] for k in keys], dtype=np.bool_),
        score=np.array([np.nan if k[6] is None else k[6] for k in keys], dtype=np.float64),
        segment=None if by is None else column(7),
    )


def _unpack(parts: Sequence[Any], n: int) -> FloatArray:
    out = np.frombuffer(b"".join(bytes(p or b"") for p in parts), dtype=">f8").astype(np.float64)
    if out.shape != (n,):
        raise RuntimeError(f"covariate fetch: {out.shape[0]} values for {n} invitees")
    return out


def _distinct(
    pattern: IntArray, total: FloatArray, days: FloatArray, count: FloatArray
) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
    """Equal rows merged (their counts added), sorted by pattern, days and total."""
    if pattern.size == 0:
        return pattern, total, days, count
    # Sorted and compared by bit pattern: exact, and NaN equals NaN. Sorting by pattern and
    # days first (the pattern as a small integer, which numpy sorts in linear time) usually
    # settles the order, as continuous values rarely repeat; only ties need the total too.
    t_bits, d_bits = total.view(np.int64), days.view(np.int64)
    order = np.argsort(d_bits, kind="stable")
    small = pattern.astype(np.uint16) if pattern.max() < 2**16 else pattern
    order = order[np.argsort(small[order], kind="stable")]
    same = (pattern[order][1:] == pattern[order][:-1]) & (d_bits[order][1:] == d_bits[order][:-1])
    if same.any():
        order = np.lexsort((t_bits, d_bits, pattern))
    pattern, total, days, count = pattern[order], total[order], days[order], count[order]
    if not same.any():
        return pattern, total, days, count
    t_bits, d_bits = t_bits[order], d_bits[order]
    new = np.empty(pattern.size, dtype=np.bool_)
    new[0] = True
    new[1:] = (
        (pattern[1:] != pattern[:-1]) | (t_bits[1:] != t_bits[:-1]) | (d_bits[1:] != d_bits[:-1])
    )
    starts = np.flatnonzero(new)
    return pattern[starts], total[starts], days[starts], np.add.reduceat(count, starts)
