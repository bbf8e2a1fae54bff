"""The dashboard's figures beyond the report: the 0-10 score histogram, the response rate per
channel, and the categories a view can be filtered on, each for one
:class:`reports.filters.FilteredPeriod`.

Counted as the report counts (``reports/REPORT_JSON.md``): an answer is a survey in an answered
state with a score; the response rate is answers over final invitations (invited, and not an
open invitation whose window is still open at ``now``), with its Wilson interval.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from models.lifecycle import ANSWERED_STATES, INVITED_STATES, OPEN_STATES
from models.orders import Order
from models.surveys import Survey
from reports.filters import FilteredPeriod
from reports.query import UNKNOWN
from reports.stats.aapor import wilson_rate

_ANSWERED = [s.value for s in ANSWERED_STATES]
_INVITED = [s.value for s in INVITED_STATES]
_OPEN = [s.value for s in OPEN_STATES]
MAX_CATEGORIES = 200


def score_histogram(session: Session, view: FilteredPeriod) -> list[int]:
    """Answers per score 0..10 (index = score)."""
    stmt = (
        select(Survey.score, func.count())
        .select_from(Survey)
        .join(Order, Order.id == Survey.order_id)
        .where(view.condition(), Survey.state.in_(_ANSWERED), Survey.score.between(0, 10))
        .group_by(Survey.score)
    )
    counts = [0] * 11
    for score, n in session.execute(stmt):
        if score is not None:
            counts[int(score)] = int(n)
    return counts


def response_by_channel(
    session: Session, view: FilteredPeriod, now: datetime
) -> list[dict[str, Any]]:
    """``[{label, response_rate: {count, nobs, rate, ci95}}]`` per survey channel, by name."""
    still_open = and_(
        Survey.state.in_(_OPEN), or_(Survey.closes_at.is_(None), Survey.closes_at > now)
    )
    final = and_(Survey.state.in_(_INVITED), ~still_open)
    answered = and_(Survey.state.in_(_ANSWERED), Survey.score.between(0, 10))
    stmt = (
        select(
            Survey.channel,
            func.sum(case((final, 1), else_=0)),
            func.sum(case((answered, 1), else_=0)),
        )
        .select_from(Survey)
        .join(Order, Order.id == Survey.order_id)
        .where(view.condition(), Survey.state.in_(_INVITED))
        .group_by(Survey.channel)
        .order_by(Survey.channel)
    )
    out: list[dict[str, Any]] = []
    for channel, nobs, count in session.execute(stmt):
        if nobs:
            rate = wilson_rate(int(count or 0), int(nobs))
            out.append({"label": str(channel), "response_rate": rate.to_dict()})
    return out


def categories(session: Session, view: FilteredPeriod) -> list[str]:
    """The order categories of the period (any channel or category filter aside), by name."""
    unfiltered = FilteredPeriod(view.since, view.until)
    label = func.coalesce(Order.category, UNKNOWN)
    stmt = (
        select(label).distinct().where(unfiltered.condition()).order_by(label).limit(MAX_CATEGORIES)
    )
    return [str(c) for c in session.scalars(stmt)]
