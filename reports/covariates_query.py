"""The covariates of every final invitation, fetched column-wise into numpy arrays for the
non-response adjustment (:func:`reports.stats.adjustment.adjust_nps`): one packed row per
invitation on PostgreSQL, plain rows elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from sqlalchemy import (
    ColumnElement,
    Float,
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

from models.orders import Order
from models.surveys import Survey
from reports.query import (
    ANSWERED_VALUES,
    INVITED_VALUES,
    NO_ARM,
    OPEN_VALUES,
    UNKNOWN,
    Period,
    days_to_send_expr,
    dialect_of,
    segment_expr,
)

FloatArray = npt.NDArray[np.float64]
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
    closed = [s for s in INVITED_VALUES if s not in OPEN_VALUES]
    return or_(
        Survey.state.in_(closed),
        and_(Survey.state.in_(OPEN_VALUES), Survey.closes_at <= now),
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
    dialect = dialect_of(session)
    columns: list[tuple[str, ColumnElement[Any]]] = [
        ("f", Survey.__table__.c.id),
        ("s", Survey.__table__.c.channel),
        ("s", func.coalesce(Order.category, UNKNOWN)),
        ("f", func.cast(func.coalesce(Order.total_amount, 0), Float)),
        ("f", case((func.coalesce(Order.previous_orders, 0) > 0, 1.0), else_=0.0)),
        ("s", func.coalesce(Order.country, UNKNOWN)),
        ("s", func.coalesce(Survey.arm, NO_ARM)),
        ("f", days_to_send_expr(dialect)),
        ("f", case((Survey.state.in_(ANSWERED_VALUES), 1.0), else_=0.0)),
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
