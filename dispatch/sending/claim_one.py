"""The claim of a send that may go, in one statement on PostgreSQL.

``queued -> sending`` with its marker, only when everything the re-check looks at lets the send
go (the order not cancelled, the customer not erased, the channel's contact valid, its current
consent a grant), with the transition row written by the same statement (a data-modifying
``WITH``) and the columns the message needs returned. It runs outside an explicit transaction:
one round trip, committed on its own. When it claims nothing (a duplicate message, a channel
changed, or something stops the send), :func:`dispatch.sending.claims.claim` takes over and
finds out why in a transaction of its own, recording what stops the send there.

A revocation, cancellation or erasure committed before the statement starts is seen by it; one
that moves the row meanwhile holds the row's lock, and the statement then finds the row no
longer ``queued`` and claims nothing. SQLite runs no data-modifying ``WITH``: there the
transaction of :func:`~dispatch.sending.claims.claim` does it all.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Row,
    Table,
    bindparam,
    case,
    exists,
    insert,
    literal,
    null,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from channels.base import ChannelName
from dispatch.consent import consent_granted
from dispatch.sending.common import (
    SURVEYS,
    TRANSITIONS,
    move_one,
    record_transition,
    state_in,
)
from models import Customer, Order, SurveyState
from models.customers import ContactStatus
from models.lifecycle import can_move
from models.session import engine_of, retry_on_disconnect, single_statement

S = SurveyState

_CUSTOMERS = cast(Table, Customer.__table__)
_ORDERS = cast(Table, Order.__table__)


def _statement(customer_columns: tuple[str, ...], order_columns: tuple[str, ...]) -> Any:
    customer_of = _CUSTOMERS.c.id == SURVEYS.c.customer_id
    contact_status = case(
        (SURVEYS.c.channel == "email", _CUSTOMERS.c.email_status),
        else_=_CUSTOMERS.c.phone_status,
    )
    claimable = [S.queued.value] if can_move(S.queued, S.sending) else []
    claimed = (
        update(SURVEYS)
        .where(
            SURVEYS.c.id == bindparam("survey_id"),
            state_in(SURVEYS.c.state, claimable),
            SURVEYS.c.channel == bindparam("b_channel"),
            exists().where(
                customer_of,
                _CUSTOMERS.c.erased_at.is_(None),
                contact_status == ContactStatus.valid,
            ),
            exists().where(_ORDERS.c.id == SURVEYS.c.order_id, _ORDERS.c.cancelled_at.is_(None)),
            consent_granted(SURVEYS.c.customer_id, SURVEYS.c.channel) == true(),
        )
        .values(
            state=S.sending.value,
            state_changed_at=bindparam("now"),
            attempts=SURVEYS.c.attempts + 1,
            sending_at=bindparam("now"),
        )
        .returning(
            SURVEYS.c.id,
            SURVEYS.c.order_id,
            SURVEYS.c.customer_id,
            SURVEYS.c.channel,
            SURVEYS.c.attempts,
            SURVEYS.c.tried_channels,
            SURVEYS.c.closes_at,
            SURVEYS.c.timezone,
            *[
                select(_CUSTOMERS.c[name]).where(customer_of).scalar_subquery().label(name)
                for name in customer_columns
            ],
            *[
                select(_ORDERS.c[name])
                .where(_ORDERS.c.id == SURVEYS.c.order_id)
                .scalar_subquery()
                .label(name)
                for name in order_columns
            ],
        )
        .cte("claimed")
    )
    history = insert(TRANSITIONS).from_select(
        ["survey_id", "from_state", "to_state", "at", "reason"],
        select(
            claimed.c.id,
            literal(S.queued.value),
            literal(S.sending.value),
            bindparam("now", type_=TRANSITIONS.c.at.type),
            null(),
        ),
    )
    return select(claimed).add_cte(history.cte("history"))


_STATEMENTS: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}


def claim_in_one(
    factory: sessionmaker[Session],
    survey_id: int,
    channel: ChannelName,
    now: datetime,
    customer_columns: tuple[str, ...],
    order_columns: tuple[str, ...],
) -> Row[Any] | None:
    """The claimed row (the survey's columns, and the customer's and order's named ones), or
    ``None`` when nothing was claimed. PostgreSQL only."""
    key = (customer_columns, order_columns)
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS.setdefault(key, _statement(customer_columns, order_columns))
    with single_statement(engine_of(factory)) as connection:
        row: Row[Any] | None = connection.execute(
            statement, {"survey_id": survey_id, "b_channel": channel.value, "now": now}
        ).first()
        return row


def give_back(factory: sessionmaker[Session], survey_id: int, attempts: int, now: datetime) -> None:
    """A claim whose message could not be built goes back to ``queued``, without its marker
    (the provider was not called) and without counting as an attempt. A compare-and-set from
    ``sending``: run again on a new connection when the pooled one was dead."""

    def work() -> None:
        with factory() as session, session.begin():
            move_one(
                session,
                survey_id,
                S.sending,
                S.queued,
                now=now,
                reason="the message could not be built",
                sending_at=None,
                queued_at=now,
                attempts=max(attempts - 1, 0),
            )

    retry_on_disconnect(work)


#: A claim this worker made at ``now`` whose answer it never heard, back to ``queued``.
_TAKE_BACK = (
    update(SURVEYS)
    .where(
        SURVEYS.c.id == bindparam("survey_id"),
        SURVEYS.c.state == S.sending.value,
        SURVEYS.c.sending_at == bindparam("now"),
    )
    .values(
        state=S.queued.value,
        state_changed_at=bindparam("now"),
        sending_at=None,
        queued_at=bindparam("now"),
        attempts=case((SURVEYS.c.attempts > 0, SURVEYS.c.attempts - 1), else_=0),
    )
    .returning(SURVEYS.c.id)
)


def take_back_unheard_claim(factory: sessionmaker[Session], survey_id: int, now: datetime) -> bool:
    """Before a claim runs again because its connection was lost: the lost one may have been
    committed by the server with its answer lost on the way back (the commit is ambiguous).
    Run again blind, it would find the row ``sending`` and do nothing, leaving a claim with
    its marker that no worker sends, which the reconciler could only end ``send_unknown``.

    So a row still ``sending`` with this worker's own marker (``sending_at`` is the send's
    ``now``, which no other worker's claim carries) goes back to ``queued`` first, without
    counting an attempt: the provider was not called, as this worker never got past its
    claim. The claim that follows then takes it, re-checking everything. Returns whether a
    claim was taken back."""
    if not can_move(S.sending, S.queued):
        return False
    with factory() as session, session.begin():
        taken = session.execute(_TAKE_BACK, {"survey_id": survey_id, "now": now}).first()
        if taken is None:
            return False
        record_transition(
            session,
            survey_id,
            S.sending,
            S.queued,
            now=now,
            reason="the claim's answer was lost with its connection; claimed again",
        )
    return True
