"""The report's SQL: aggregation in the database, one vectorised fetch for the propensity model.

Everything that counts is a ``SELECT ... GROUP BY`` (states, score bands, skip reasons, segment
keys), so the database does the counting and Python only sees a few hundred aggregated rows. The
one per-row fetch is :func:`fetch_covariates`: one row per invitee with a final outcome, moved
column-wise into numpy arrays for :func:`reports.stats.adjustment.adjust_nps`.

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
from typing import Any, Final, cast

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    ColumnElement,
    Float,
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

_OPEN = [s.value for s in OPEN_STATES]
_INVITED = [s.value for s in INVITED_STATES]
_ANSWERED = [s.value for s in ANSWERED_STATES]


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


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def delay_days_expr(dialect: str) -> ColumnElement[Any]:
    """Whole days from anchor to send (floor), NULL when either end is missing."""
    if dialect == "postgresql":
        sql = (
            "CAST(FLOOR(EXTRACT(EPOCH FROM (surveys.sent_at - surveys.anchor_at)) / 86400) "
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


def days_to_send_expr(dialect: str) -> ColumnElement[Any]:
    """Days (fractional) from anchor to send, NULL when either end is missing."""
    if dialect == "postgresql":
        sql = (
            "CAST(EXTRACT(EPOCH FROM (surveys.sent_at - surveys.anchor_at)) / 86400.0"
            " AS DOUBLE PRECISION)"
        )
    else:
        sql = "(julianday(surveys.sent_at) - julianday(surveys.anchor_at))"
    return literal_column(sql, Float)


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
    answered = Survey.state.in_(_ANSWERED)
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
        Survey.state.in_(_OPEN), or_(Survey.closes_at.is_(None), Survey.closes_at > now)
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
    dialect = _dialect(session)
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
            delay_label(row[i], state in _INVITED) if k == "delay" else str(row[i])
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


# --------------------------------------------------------------------------- covariates


COVARIATE_NAMES: Final = (
    "channel",
    "category",
    "log_order_total",
    "repeat_buyer",
    "country",
    "arm",
    "days_anchor_to_send",
)


@dataclass(frozen=True, slots=True)
class CovariateTable:
    """One entry per invitee with a final outcome (open invitations are left out).

    ``days_anchor_to_send`` is NaN where the anchor or the send time is missing; ``score`` NaN
    for non-responders; ``segment`` the ``--by`` label per invitee (None without ``--by``).
    """

    channel: StrArray
    category: StrArray
    order_total: FloatArray
    repeat_buyer: FloatArray
    country: StrArray
    arm: StrArray
    days_anchor_to_send: FloatArray
    responded: BoolArray
    score: FloatArray
    segment: StrArray | None

    @property
    def n(self) -> int:
        return int(self.responded.size)


def final_invitation(now: datetime) -> ColumnElement[bool]:
    """Invited, with a final outcome: not inside an open response window."""
    closed = [s for s in _INVITED if s not in _OPEN]
    return or_(
        Survey.state.in_(closed),
        and_(Survey.state.in_(_OPEN), Survey.closes_at <= now),
    )


_SEP = "\x1f"  # ASCII unit separator between packed strings


def fetch_covariates(
    session: Session, period: Period, now: datetime, by: str | None = None
) -> CovariateTable:
    """The covariate table (one query, column-wise into numpy; see :class:`CovariateTable`).

    On PostgreSQL the query aggregates each column into one value (numbers packed as big-endian
    float8 ``bytea``, strings joined by a separator), so a million invitees cross the wire as a
    dozen values and land in numpy without a Python object per cell. Elsewhere the rows are
    fetched and transposed. Either way the invitees are put in survey id order, so that a
    report over the same data is reproducible to the bit.
    """
    dialect = _dialect(session)
    columns: list[tuple[str, ColumnElement[Any]]] = [
        ("f", Survey.__table__.c.id),
        ("s", Survey.__table__.c.channel),
        ("s", func.coalesce(Order.category, UNKNOWN)),
        ("f", func.cast(func.coalesce(Order.total_amount, 0), Float)),
        ("f", case((func.coalesce(Order.previous_orders, 0) > 0, 1.0), else_=0.0)),
        ("s", func.coalesce(Order.country, UNKNOWN)),
        ("s", func.coalesce(Survey.arm, NO_ARM)),
        ("f", days_to_send_expr(dialect)),
        ("f", case((Survey.state.in_(_ANSWERED), 1.0), else_=0.0)),
        ("f", func.cast(Survey.score, Float)),
    ]
    if by is not None:
        columns.append(("f" if by == "delay" else "s", segment_expr(dialect, by)))
    where = and_(period.condition(), final_invitation(now))
    if dialect == "postgresql":
        arrays = _fetch_packed(session, columns, where)
    else:
        arrays = _fetch_rows(session, columns, where)
    order = np.argsort(arrays[0], kind="stable")
    cols = [a[order] for a in arrays]

    segment: StrArray | None = None
    if by == "delay":
        segment = _delay_labels(cols[10])
    elif by is not None:
        segment = cols[10]
    return CovariateTable(
        channel=cols[1],
        category=cols[2],
        order_total=cols[3],
        repeat_buyer=cols[4],
        country=cols[5],
        arm=cols[6],
        days_anchor_to_send=cols[7],
        responded=cols[8] == 1.0,
        score=cols[9],
        segment=segment,
    )


def _packable_string(expr: ColumnElement[Any]) -> ColumnElement[Any]:
    """A string column as both fetch paths return it: NULL as "", the separator as a space."""
    return func.replace(func.coalesce(func.cast(expr, String), ""), _SEP, " ")


def _fetch_rows(
    session: Session, columns: Sequence[tuple[str, ColumnElement[Any]]], where: Any
) -> list[Any]:
    exprs = [expr if kind == "f" else _packable_string(expr) for kind, expr in columns]
    stmt = select(*exprs).select_from(Survey).join(Order, Order.id == Survey.order_id).where(where)
    rows = session.execute(stmt).all()
    cols: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    return [
        np.array(col, dtype=np.float64 if kind == "f" else np.str_).reshape(len(rows))
        for (kind, _), col in zip(columns, cols, strict=True)
    ]


def _fetch_packed(
    session: Session, columns: Sequence[tuple[str, ColumnElement[Any]]], where: Any
) -> list[Any]:
    nan: ColumnElement[Any] = literal_column("'NaN'::float8")
    empty: ColumnElement[Any] = literal_column("''::bytea")
    aggregates: list[ColumnElement[Any]] = [func.count()]
    for kind, expr in columns:
        if kind == "f":
            value = func.float8send(func.coalesce(func.cast(expr, Float), nan))
            aggregates.append(func.string_agg(value, empty))
        else:
            aggregates.append(func.string_agg(_packable_string(expr), literal(_SEP)))
    stmt = (
        select(*aggregates)
        .select_from(Survey)
        .join(Order, Order.id == Survey.order_id)
        .where(where)
    )
    row = session.execute(stmt).one()
    n = int(row[0])
    out: list[Any] = []
    for (kind, _), packed in zip(columns, row[1:], strict=True):
        if kind == "f":
            array: Any = np.frombuffer(bytes(packed or b""), dtype=">f8").astype(np.float64)
        else:
            array = np.array(packed.split(_SEP) if n else [], dtype=np.str_)
        if array.shape != (n,):
            raise RuntimeError(f"covariate fetch: {array.shape[0]} values for {n} invitees")
        out.append(array)
    return out


def _delay_labels(days: FloatArray) -> StrArray:
    """Vectorised :func:`delay_label` for invitees (NaN = no anchor)."""
    out = np.full(days.shape, UNKNOWN, dtype=object)
    known = ~np.isnan(days)
    if known.any():
        values, inverse = np.unique(days[known].astype(np.int64), return_inverse=True)
        labels = np.array([f"{v}d" for v in values.tolist()], dtype=object)
        out[known] = labels[inverse]
    return out.astype(np.str_)
