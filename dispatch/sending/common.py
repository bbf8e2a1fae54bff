"""What every step of sending shares: the outcome of an attempt, the retry backoff, the one-row
compare-and-set of a survey's state, the timed provider call, masked contacts in logs, and the
error for a broken invariant."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, bindparam, false, insert, or_, update
from sqlalchemy.orm import Session

from channels.base import Channel, ChannelName, OutboundMessage, SendReceipt
from channels.masking import mask_email, mask_phone
from logs.metrics import SEND_LATENCY
from models import Survey, SurveyState, SurveyTransition
from models.lifecycle import can_move

# One logger for the whole send path, whichever module of it speaks.
log = logging.getLogger("dispatch.sending")

MAX_SEND_ATTEMPTS = 8
BASE_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(hours=1)


class SendInvariantError(RuntimeError):
    """A row a send depends on is missing or inconsistent (a survey without its order or
    customer, a claimed invitation without a contact): a fault of ours, never a provider's
    answer. The transaction that found it is rolled back."""


class MessageNotBuilt(RuntimeError):
    """The claimed survey's message could not be built (a template or a link that fails): a
    fault of ours. The claim is undone, the survey is back in ``queued`` without counting an
    attempt, and the send is tried again (its message retried, then the stuck-survey pass), so
    that fixing the fault sends it. Counted as ``nps_sends_total{outcome="unbuilt"}``."""


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What a send attempt did; ``requeue`` asks the caller to enqueue the survey again now."""

    state: str
    detail: str
    requeue: bool = False


def backoff(attempt: int, retry_after: float | None) -> timedelta:
    if retry_after is not None:
        return max(timedelta(seconds=retry_after), timedelta(seconds=1))
    factor: int = 2 ** max(attempt - 1, 0)
    return min(BASE_BACKOFF * factor, MAX_BACKOFF)


def timed_send(channel: Channel, message: OutboundMessage) -> SendReceipt:
    """The provider call, its duration observed by channel whatever its answer."""
    started = time.perf_counter()
    try:
        return channel.send(message)
    finally:
        SEND_LATENCY.labels(message.channel.value).observe(time.perf_counter() - started)


def masked(channel: str, contact: str) -> str:
    return mask_email(contact) if channel == ChannelName.email else mask_phone(contact)


#: The send path's tables, as Core tables: its statements are built once, at import, and
#: executed with parameters (no ORM unit of work, no statement built per send).
SURVEYS = cast(Table, Survey.__table__)
TRANSITIONS = cast(Table, SurveyTransition.__table__)

_TRANSITION = insert(TRANSITIONS).values(
    survey_id=bindparam("b_survey_id"),
    from_state=bindparam("source"),
    to_state=bindparam("target"),
    at=bindparam("now"),
    reason=bindparam("b_reason"),
)


def state_in(column: Any, states: list[str]) -> ColumnElement[bool]:
    """``column IN (states)`` with one bound value a state. ``in_()`` binds an expanding
    parameter, which makes SQLAlchemy render the statement's SQL again at every execution; this
    one is rendered once, with the statement."""
    if not states:
        return false()
    return or_(*[column == state for state in states])


@lru_cache(maxsize=32)
def _move_statement(columns: tuple[str, ...]) -> Any:
    """The compare-and-set of :func:`move_one`, setting ``columns`` besides the state."""
    return (
        update(SURVEYS)
        .where(SURVEYS.c.id == bindparam("survey_id"), SURVEYS.c.state == bindparam("source"))
        .values(
            state=bindparam("target"),
            state_changed_at=bindparam("now"),
            **{column: bindparam(f"v_{column}") for column in columns},
        )
        .returning(SURVEYS.c.id)
    )


def move_one(
    session: Session,
    survey_id: int,
    source: SurveyState,
    target: SurveyState,
    *,
    now: datetime,
    reason: str | None = None,
    **values: Any,
) -> bool:
    """``models.move`` for one survey known to be in ``source``, in two statements: the
    conditional update (compare-and-set on the state, so a racing writer's update matches no
    row) and its transition row. Refuses, like ``move``, any move the lifecycle does not list;
    returns whether the row moved. Loaded objects are not expired: the send path holds none."""
    if not can_move(source, target):
        return False
    params = {
        "survey_id": survey_id,
        "source": source.value,
        "target": target.value,
        "now": now,
        **{f"v_{column}": value for column, value in values.items()},
    }
    if session.execute(_move_statement(tuple(sorted(values))), params).first() is None:
        return False
    record_transition(session, survey_id, source, target, now=now, reason=reason)
    return True


def record_transition(
    session: Session,
    survey_id: int,
    source: SurveyState,
    target: SurveyState,
    *,
    now: datetime,
    reason: str | None = None,
) -> None:
    """The history row of a move this session's own compare-and-set made."""
    session.execute(
        _TRANSITION,
        {
            "b_survey_id": survey_id,
            "source": source.value,
            "target": target.value,
            "now": now,
            "b_reason": reason,
        },
    )
