"""Steps 1 and 3 of a send: pick up the ``queued`` row before the rate-limit wait, then claim it
``queued -> sending`` and re-check consent, contact, cancellation and erasure on fresh rows;
what stops a send ends it (``withdrawn``, ``suppressed``, ``failed``) or falls back to the next
consented channel."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import ChannelName, OutboundMessage
from config import OperatorConfig
from dispatch import timing
from dispatch.consent import withdraw_if_stopped
from dispatch.planning import choose_channel
from dispatch.sending.common import SendInvariantError, SendOutcome, log
from models import Customer, Order, Survey, SurveyState, current_consent, move
from models.customers import ContactStatus

S = SurveyState

#: Builds the message of a claimed survey from its fresh rows.
Build = Callable[[Survey, Customer], OutboundMessage]


def pick_up(
    factory: sessionmaker[Session], survey_id: int, config: OperatorConfig, now: datetime
) -> SendOutcome | ChannelName:
    """Before the rate-limit wait: a row that is not ``queued`` is a duplicate message (or
    settled already) and costs no slot; quiet hours send it back to ``scheduled``. Otherwise
    the row stays ``queued`` and its ``queued_at`` is renewed, a lease: the stuck-queue sweep
    enqueues again only rows queued for longer than its ``stuck_after``, so a worker waiting
    for its slot is not doubled, and a worker that dies while waiting leaves a row the sweep
    finds. Returns the channel to wait for."""
    with factory() as session, session.begin():
        survey = session.get(Survey, survey_id)
        if survey is None:
            return SendOutcome("missing", "no such survey")
        if survey.state != S.queued:
            return SendOutcome(survey.state, "not queued: nothing to do")
        allowed = timing.next_allowed_moment(
            now,
            timing.resolve_timezone(survey.timezone, None, None, config.schedule.default_timezone),
            config.schedule.quiet_hours,
            config.schedule.send_days,
        )
        if allowed > now:
            # The message waited past the start of quiet hours: wait for the morning.
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
        session.execute(
            update(Survey)
            .where(Survey.id == survey_id, Survey.state == S.queued)
            .values(queued_at=now)
            .execution_options(synchronize_session=False)
        )
        return ChannelName(survey.channel)


def claim(
    factory: sessionmaker[Session],
    survey_id: int,
    channel: ChannelName,
    config: OperatorConfig,
    now: datetime,
    build: Build | None,
) -> SendOutcome | tuple[Survey, Customer, OutboundMessage | None]:
    """After the wait, in one short transaction: claim ``queued -> sending`` (a duplicate
    message, or a second worker, finds it claimed and does nothing), re-check on fresh rows
    (what was committed while this worker waited counts), build the message from them and
    set the marker ``sending_at`` that the provider may be called from now on. Without
    ``build`` (the channel is off) the row is claimed and re-checked only: no message, no marker.

    The row is locked first: a STOP committed meanwhile is seen by the consent re-check, or
    else finds the row with its marker and ends it ``opted_out`` (dispatch.responses). Claim
    and marker commit together, so a ``sending`` row always has its provider call under way
    or done, and the scheduler's sweep never takes back a claim whose worker is alive."""
    with factory() as session, session.begin():
        survey = session.get(Survey, survey_id, with_for_update=True)
        if survey is None:
            return SendOutcome("missing", "no such survey")
        if survey.state != S.queued:
            return SendOutcome(survey.state, "not queued after the wait: nothing to do")
        if survey.channel != channel:
            # Moved to a fallback channel meanwhile: that channel's own message sends it.
            return SendOutcome(S.queued, "channel changed while waiting: nothing to do")
        order = session.get(Order, survey.order_id)
        customer = session.get(Customer, survey.customer_id)
        if order is None or customer is None:
            raise SendInvariantError(f"survey {survey_id}: its order or customer row is missing")
        if not move(
            session,
            survey_id,
            S.sending,
            only_from=[S.queued],
            now=now,
            sending_at=None,
            attempts=survey.attempts + 1,
        ):
            return SendOutcome("lost", "claimed by another worker")
        session.refresh(survey)
        stop = recheck(session, survey, order, customer, config, now)
        if stop is not None:
            log.info("survey %s: stopped at claim time: %s", survey_id, stop.detail)
            return stop
        if build is None:
            return survey, customer, None
        message = build(survey, customer)
        survey.sending_at = now
        return survey, customer, message


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
