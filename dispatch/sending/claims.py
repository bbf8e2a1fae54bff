"""Steps 1 and 3 of a send: pick up the ``queued`` row before the rate-limit wait, then claim it
``queued -> sending`` and re-check consent, contact, cancellation and erasure on fresh rows;
what stops a send ends it (``withdrawn``, ``suppressed``, ``failed``) or falls back to the next
consented channel.

Each is one statement when the send goes ahead: the pick-up a read of the row (its lease is
renewed only when it has run for a while), the claim an ``UPDATE ... RETURNING`` that carries
what the message and the re-check need (the customer's contact, name and language, the
order's cancellation, the current consent), plus its transition row. Only a send that stops,
or a row found in another state, reads more."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, select, update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import ChannelName, OutboundMessage
from config import OperatorConfig
from dispatch import timing
from dispatch.consent import consent_granted, withdraw_if_stopped, withdrawal_reason
from dispatch.planning import choose_channel
from dispatch.sending.claim_one import claim_in_one, give_back
from dispatch.sending.common import (
    SURVEYS,
    MessageNotBuilt,
    SendInvariantError,
    SendOutcome,
    log,
    record_transition,
    state_in,
)
from logs.metrics import SENDS
from models import Customer, Order, Survey, SurveyState, current_consent, move
from models.customers import ContactStatus
from models.lifecycle import can_move
from models.session import engine_of, single_statement

S = SurveyState

#: Builds the message of a claimed survey from its fresh rows.
Build = Callable[[Survey, Customer], OutboundMessage]

#: A ``queued`` row picked up longer ago than this has its lease renewed at pick-up; a fresher
#: one is only read (no write, so no commit to wait for on the way to the provider).
LEASE_RENEW_AFTER = timedelta(seconds=30)

_SURVEYS = SURVEYS
_CUSTOMERS = cast(Table, Customer.__table__)
_ORDERS = cast(Table, Order.__table__)

#: The customer's and order's columns a claim carries back (what the message and the re-check
#: read).
_CUSTOMER_COLUMNS = (
    "email",
    "email_status",
    "phone",
    "phone_status",
    "first_name",
    "locale",
    "erased_at",
)
_ORDER_COLUMNS = ("cancelled_at", "cancel_kind")

_PICK_UP = select(
    _SURVEYS.c.state, _SURVEYS.c.channel, _SURVEYS.c.timezone, _SURVEYS.c.queued_at
).where(_SURVEYS.c.id == bindparam("survey_id"))

_RENEW_LEASE = (
    update(_SURVEYS)
    .where(_SURVEYS.c.id == bindparam("survey_id"), _SURVEYS.c.state == S.queued.value)
    .values(queued_at=bindparam("now"))
)


def _claim_statement() -> Any:
    """``queued -> sending`` for one survey on one channel, returning the survey's, its
    customer's and its order's columns the send needs, and its current consent."""
    customer = [
        select(_CUSTOMERS.c[name])
        .where(_CUSTOMERS.c.id == _SURVEYS.c.customer_id)
        .scalar_subquery()
        .label(name)
        for name in _CUSTOMER_COLUMNS
    ]
    order = [
        select(_ORDERS.c[name])
        .where(_ORDERS.c.id == _SURVEYS.c.order_id)
        .scalar_subquery()
        .label(name)
        for name in _ORDER_COLUMNS
    ]
    # The lifecycle decides whether a queued survey may be claimed at all.
    claimable = [S.queued.value] if can_move(S.queued, S.sending) else []
    return (
        update(_SURVEYS)
        .where(
            _SURVEYS.c.id == bindparam("survey_id"),
            state_in(_SURVEYS.c.state, claimable),
            _SURVEYS.c.channel == bindparam("b_channel"),
        )
        .values(
            state=S.sending.value,
            state_changed_at=bindparam("now"),
            attempts=_SURVEYS.c.attempts + 1,
            sending_at=bindparam("b_sending_at"),
        )
        .returning(
            _SURVEYS.c.id,
            _SURVEYS.c.order_id,
            _SURVEYS.c.customer_id,
            _SURVEYS.c.channel,
            _SURVEYS.c.attempts,
            _SURVEYS.c.tried_channels,
            _SURVEYS.c.closes_at,
            _SURVEYS.c.timezone,
            *customer,
            *order,
            consent_granted(_SURVEYS.c.customer_id, _SURVEYS.c.channel).label("consented"),
        )
    )


_CLAIM = _claim_statement()

_CLEAR_MARKER = (
    update(_SURVEYS).where(_SURVEYS.c.id == bindparam("survey_id")).values(sending_at=None)
)


def pick_up(
    factory: sessionmaker[Session], survey_id: int, config: OperatorConfig, now: datetime
) -> SendOutcome | ChannelName:
    """Before the rate-limit wait: a row that is not ``queued`` is a duplicate message (or
    settled already) and costs no slot; quiet hours send it back to ``scheduled``. Otherwise
    the row stays ``queued``; its ``queued_at`` is a lease: the stuck-queue sweep enqueues
    again only rows queued for longer than its ``stuck_after``, so a row queued more than
    :data:`LEASE_RENEW_AFTER` ago has it renewed here, so that a worker waiting for its slot is
    not doubled, and a worker that dies while waiting leaves a row the sweep finds. Returns the
    channel to wait for."""
    row = _read_row(factory, survey_id)
    if row is None:
        return SendOutcome("missing", "no such survey")
    if row.state != S.queued:
        return SendOutcome(row.state, "not queued: nothing to do")
    allowed = timing.next_allowed_moment(
        now,
        timing.resolve_timezone(row.timezone, None, None, config.schedule.default_timezone),
        config.schedule.quiet_hours,
        config.schedule.send_days,
    )
    if allowed > now:
        # The message waited past the start of quiet hours: wait for the morning.
        with factory() as session, session.begin():
            move(
                session,
                survey_id,
                S.scheduled,
                reason="quiet hours at sending time",
                only_from=[S.queued],
                now=now,
                due_at=allowed,
            )
        return SendOutcome(S.scheduled, f"quiet hours: due again at {allowed.isoformat()}")
    if row.queued_at is None or row.queued_at < now - LEASE_RENEW_AFTER:
        with factory() as session, session.begin():
            session.execute(_RENEW_LEASE, {"survey_id": survey_id, "now": now})
    return ChannelName(row.channel)


def _read_row(factory: sessionmaker[Session], survey_id: int) -> Row[Any, Any, Any, Any] | None:
    """The pick-up's read. On PostgreSQL outside a transaction (one round trip, no BEGIN and
    COMMIT around it): what follows from it is written in transactions of its own, each a
    compare-and-set on the state it read."""
    engine = engine_of(factory)
    if engine.dialect.name == "postgresql":
        with single_statement(engine) as connection:
            return connection.execute(_PICK_UP, {"survey_id": survey_id}).first()
    with factory() as session, session.begin():
        return session.execute(_PICK_UP, {"survey_id": survey_id}).first()


def _claimed_rows(row: Row[Any]) -> tuple[Survey, Order, Customer]:
    """The claimed survey, its order and customer as detached objects, from the claim's row."""
    survey = Survey(
        id=row.id,
        order_id=row.order_id,
        customer_id=row.customer_id,
        channel=row.channel,
        state=S.sending.value,
        attempts=row.attempts,
        tried_channels=row.tried_channels,
        closes_at=row.closes_at,
        timezone=row.timezone,
    )
    order = Order(id=row.order_id, **{name: getattr(row, name) for name in _ORDER_COLUMNS})
    customer = Customer(
        id=row.customer_id, **{name: getattr(row, name) for name in _CUSTOMER_COLUMNS}
    )
    return survey, order, customer


def _not_claimed(session: Session, survey_id: int) -> SendOutcome:
    found = session.execute(_PICK_UP, {"survey_id": survey_id}).first()
    if found is None:
        return SendOutcome("missing", "no such survey")
    if found.state != S.queued:
        return SendOutcome(found.state, "not queued after the wait: nothing to do")
    # Moved to a fallback channel meanwhile: that channel's own message sends it.
    return SendOutcome(S.queued, "channel changed while waiting: nothing to do")


def claim(
    factory: sessionmaker[Session],
    survey_id: int,
    channel: ChannelName,
    config: OperatorConfig,
    now: datetime,
    build: Build | None,
) -> SendOutcome | tuple[Survey, Customer, OutboundMessage | None]:
    """After the wait, in one short transaction: claim ``queued -> sending`` (a duplicate
    message, or a second worker, finds it claimed and does nothing), re-check what the claim
    read (what was committed while this worker waited counts), build the message from it and
    set the marker ``sending_at`` that the provider may be called from now on. Without
    ``build`` (the channel is off) the row is claimed and re-checked only: no message, no marker.

    The claim locks the row: a STOP committed meanwhile is seen by the consent re-check, or
    else finds the row with its marker and ends it ``opted_out`` (dispatch.responses). Claim
    and marker commit together, and a send stopped by the re-check has its marker cleared in
    the same transaction, so a ``sending`` row with its marker always has its provider call
    under way or done, and the scheduler's sweep never takes back a claim whose worker is
    alive. The claimed objects returned are detached: the send path reads them, never loads
    them again.

    On PostgreSQL a send that may go is claimed first in one statement
    (:mod:`dispatch.sending.claim_one`); what it does not claim comes here."""
    if build is not None and engine_of(factory).dialect.name == "postgresql":
        fast = claim_in_one(factory, survey_id, channel, now, _CUSTOMER_COLUMNS, _ORDER_COLUMNS)
        if fast is not None:
            survey, _, customer = _claimed_rows(fast)
            try:
                message = build(survey, customer)
            except Exception as exc:
                give_back(factory, survey_id, survey.attempts, now)
                raise _not_built(survey_id, channel, exc) from None
            return survey, customer, message
    with factory() as session, session.begin():
        row = session.execute(
            _CLAIM,
            {
                "survey_id": survey_id,
                "b_channel": channel.value,
                "now": now,
                "b_sending_at": now if build is not None else None,
            },
        ).first()
        if row is None:
            return _not_claimed(session, survey_id)
        if row.email_status is None:
            raise SendInvariantError(f"survey {survey_id}: its order or customer row is missing")
        record_transition(session, survey_id, S.queued, S.sending, now=now)
        survey, order, customer = _claimed_rows(row)
        _, status = customer.contact_for(survey.channel)
        may_go = (
            withdrawal_reason(order, customer) is None
            and bool(row.consented)
            and status == ContactStatus.valid
        )
        if not may_go:
            stop = recheck(session, survey, order, customer, config, now)
            if stop is not None:
                # Stopped before any provider call: no marker on the row, wherever it went.
                session.execute(_CLEAR_MARKER, {"survey_id": survey_id})
                SENDS.labels(channel.value, "withdrawn").inc()
                log.info("survey %s: stopped at claim time: %s", survey_id, stop.detail)
                return stop
        if build is None:
            return survey, customer, None
        try:
            return survey, customer, build(survey, customer)
        except Exception as exc:  # the transaction rolls back: the claim is undone
            raise _not_built(survey_id, channel, exc) from None


def _not_built(survey_id: int, channel: ChannelName, exc: Exception) -> MessageNotBuilt:
    SENDS.labels(channel.value, "unbuilt").inc()
    # The exception's type only, here and in what the worker logs (raised ``from None``): a
    # template's error can quote the values it was given, a customer's name among them.
    log.error(
        "survey %s: message could not be built (%s); back in queued", survey_id, type(exc).__name__
    )
    return MessageNotBuilt(f"survey {survey_id}: message could not be built")


def recheck(
    session: Session,
    survey: Survey,
    order: Order,
    customer: Customer,
    config: OperatorConfig,
    now: datetime,
) -> SendOutcome | None:
    """``None`` when the claimed send may go; else what stopped it, already recorded."""
    reason = withdraw_if_stopped(session, survey, order, customer, only_from=S.sending, now=now)
    if reason is not None:
        return SendOutcome(S.withdrawn, reason)
    consented = current_consent(session, customer.id, survey.channel)
    _, status = customer.contact_for(survey.channel)
    if consented and status == ContactStatus.valid:
        return None
    why = f"{survey.channel} consent revoked" if not consented else "contact not valid"
    return fallback_or_end(session, survey, customer, config, now, why, S.suppressed)


def fallback_or_end(
    session: Session,
    survey: Survey,
    customer: Customer,
    config: OperatorConfig,
    now: datetime,
    why: str,
    final: SurveyState,
) -> SendOutcome:
    """Queue the ``sending`` row again on the next consented channel not tried yet (when the
    operator allows a fallback), else end it in ``final``."""
    tried = tuple((survey.tried_channels or survey.channel).split(","))
    alternative = (
        choose_channel(session, customer, config, exclude=tried)
        if config.contact.fallback
        else None
    )
    if alternative is not None and alternative.channel is not None:
        move(
            session,
            survey.id,
            S.queued,
            reason=f"{why}; falling back to {alternative.channel}",
            only_from=[S.sending],
            now=now,
            channel=alternative.channel,
            tried_channels=",".join([*tried, alternative.channel]),
        )
        return SendOutcome(S.queued, f"{why}; fallback to {alternative.channel}", requeue=True)
    move(session, survey.id, final, reason=why, only_from=[S.sending], now=now, final_reason=why)
    return SendOutcome(final, why)
