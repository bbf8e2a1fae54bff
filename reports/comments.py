"""The answers with a comment, latest first, for the dashboard's list and its CSV download:
one :class:`reports.filters.FilteredPeriod`, optionally one score band and a search text.

The search is a case-insensitive substring of the comment, sent to the database as a bound
parameter with ``%``, ``_`` and the escape character escaped, so it matches literally. Pages are
read with ``LIMIT per_page + 1``: one row more says whether an older page exists, without
counting every comment.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import ColumnElement, Row, Select, and_, func, select
from sqlalchemy.orm import Session

from models.lifecycle import ANSWERED_STATES
from models.orders import Order
from models.surveys import Survey
from reports.filters import FilteredPeriod
from reports.query import UNKNOWN
from reports.stats.nps import NpsBands

PER_PAGE: Final = 20
MAX_QUERY = 200
_ANSWERED = [s.value for s in ANSWERED_STATES]
_ESCAPE = "\\"


@dataclass(frozen=True, slots=True)
class Comment:
    answered_at: datetime
    score: int
    band: str
    channel: str
    category: str
    comment: str


@dataclass(frozen=True, slots=True)
class CommentPage:
    comments: list[Comment]
    page: int
    has_older: bool


def band_of(bands: NpsBands, score: int) -> str:
    for name, (low, high) in (
        ("detractor", bands.detractor),
        ("passive", bands.passive),
        ("promoter", bands.promoter),
    ):
        if low <= score <= high:
            return name
    return "none"


def _like_pattern(text: str) -> str:
    escaped = text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%")
    return "%" + escaped.replace("_", _ESCAPE + "_") + "%"


def _select(
    view: FilteredPeriod, bands: NpsBands, band: str | None, query: str | None
) -> Select[datetime | None, int | None, str, str, str | None]:
    where: list[ColumnElement[bool]] = [
        view.condition(),
        Survey.state.in_(_ANSWERED),
        Survey.answered_at.is_not(None),
        Survey.score.is_not(None),
        Survey.comment.is_not(None),
        Survey.comment != "",
    ]
    if band is not None:
        low, high = getattr(bands, band)
        where.append(Survey.score.between(low, high))
    if query:
        where.append(Survey.comment.ilike(_like_pattern(query), escape=_ESCAPE))
    return (
        select(
            Survey.answered_at,
            Survey.score,
            Survey.channel,
            func.coalesce(Order.category, UNKNOWN),
            Survey.comment,
        )
        .select_from(Survey)
        .join(Order, Order.id == Survey.order_id)
        .where(and_(*where))
        .order_by(Survey.answered_at.desc(), Survey.id.desc())
    )


def _comment(
    bands: NpsBands, row: Row[datetime | None, int | None, str, str, str | None]
) -> Comment:
    answered_at, score, channel, category, text = row
    # The query selects only rows with an answer time, a score and a comment.
    if answered_at is None or score is None or text is None:
        raise RuntimeError("comment row without its answer time, score or text")
    return Comment(answered_at, score, band_of(bands, score), channel, category, text)


def comment_page(
    session: Session,
    view: FilteredPeriod,
    bands: NpsBands,
    *,
    band: str | None = None,
    query: str | None = None,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> CommentPage:
    """Page ``page`` (from 1) of the comments, latest first."""
    stmt = _select(view, bands, band, query).limit(per_page + 1).offset((page - 1) * per_page)
    rows = [_comment(bands, r) for r in session.execute(stmt)]
    return CommentPage(rows[:per_page], page, len(rows) > per_page)


def iter_comments(
    session: Session,
    view: FilteredPeriod,
    bands: NpsBands,
    *,
    band: str | None = None,
    query: str | None = None,
) -> Iterator[Comment]:
    """Every comment of the view, latest first, streamed in chunks."""
    stmt = _select(view, bands, band, query).execution_options(yield_per=1000)
    for row in session.execute(stmt):
        yield _comment(bands, row)
