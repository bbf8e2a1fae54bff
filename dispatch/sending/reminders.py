"""Reminders: the send steps on an open invitation. Claimed by their count (compare-and-set, so a
duplicate message does nothing), re-checked after the rate-limit wait (still open, so neither
answered nor opted out; consent, contact, order, erasure), sent once and never retried."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import (
    Channel,
    ChannelName,
    OutboundMessage,
    OutcomeUnknownError,
    SendError,
    TransientSendError,
)
from channels.console.send import PROVIDER as CONSOLE
from config import OperatorConfig
from dispatch import timing
from dispatch.consent import erased_customer
from dispatch.sending.common import log, masked, timed_send
from logs.metrics import SENDS
from models import Customer, MessageRecord, Order, Survey, current_consent
from models.customers import ContactStatus
from models.lifecycle import OPEN_STATES
from models.session import retry_on_disconnect


def _outcome_of(exc: SendError) -> str:
    """The outcome label of a provider error (``logs.metrics.SENDS``)."""
    if isinstance(exc, OutcomeUnknownError):
        return "unknown"
    if isinstance(exc, TransientSendError):
        return "transient"
    return "permanent"


#: Builds a claimed reminder's message from its fresh rows.
Build = Callable[[Survey, Customer], OutboundMessage]


def reminder_stop(session: Session, survey: Survey | None) -> str | tuple[Survey, Customer]:
    """Why no reminder may go now, or the survey and its customer when one may: the invitation
    must still be open (not answered, opted out, bounced or closed), the order standing, the
    customer not erased, consent for the channel current and the contact valid."""
    if survey is None or survey.state not in OPEN_STATES:
        return "not open: no reminder"
    order = session.get(Order, survey.order_id)
    customer = session.get(Customer, survey.customer_id)
    if customer is None or customer.erased_at is not None:
        return "customer erased: no reminder"
    if order is not None and order.cancelled_at is not None:
        return f"order {order.cancel_kind}: no reminder"
    _, status = customer.contact_for(survey.channel)
    if not current_consent(session, customer.id, survey.channel) or (status != ContactStatus.valid):
        return "no consent or contact: no reminder"
    return survey, customer


def claim_reminder(
    factory: sessionmaker[Session],
    survey_id: int,
    expected_sent: int,
    config: OperatorConfig,
    now: datetime,
) -> str | ChannelName:
    reminder = config.survey.reminder
    with factory() as session, session.begin():
        found = session.get(Survey, survey_id)
        checked = reminder_stop(session, found)
        if isinstance(checked, str):
            if found is not None:
                found.next_reminder_at = None
            return checked
        survey, _ = checked
        if expected_sent >= reminder.max:
            survey.next_reminder_at = None
            return "reminders used up"
        tz = timing.resolve_timezone(survey.timezone, None, None, config.schedule.default_timezone)
        allowed = timing.next_allowed_moment(
            now, tz, config.schedule.quiet_hours, config.schedule.send_days
        )
        if allowed > now:
            survey.next_reminder_at = allowed
            return f"quiet hours: reminder at {allowed.isoformat()}"
        claimed = session.execute(
            update(Survey)
            .where(
                Survey.id == survey_id,
                Survey.reminders_sent == expected_sent,
                Survey.state.in_([st.value for st in OPEN_STATES]),
            )
            .values(
                reminders_sent=expected_sent + 1,
                next_reminder_at=(
                    now + reminder.after if expected_sent + 1 < reminder.max else None
                ),
            )
            .returning(Survey.id)
            .execution_options(synchronize_session=False)
        ).first()
        if claimed is None:
            return "reminder already sent"
        return ChannelName(survey.channel)


def recheck_reminder(
    factory: sessionmaker[Session], survey_id: int, expected_sent: int, build: Build
) -> str | OutboundMessage:
    """After the rate limit wait, in a fresh transaction: the reminder still wanted, built
    from fresh rows; else the claimed count handed back and no more reminders."""
    with factory() as session, session.begin():
        checked = reminder_stop(session, session.get(Survey, survey_id))
        if isinstance(checked, str):
            session.execute(
                update(Survey)
                .where(Survey.id == survey_id, Survey.reminders_sent == expected_sent + 1)
                .values(reminders_sent=expected_sent, next_reminder_at=None)
                .execution_options(synchronize_session=False)
            )
            log.info(
                "survey %s: reminder stopped after the rate limit wait: %s", survey_id, checked
            )
            return checked
        survey, customer = checked
        return build(survey, customer)


def record_reminder(
    factory: sessionmaker[Session],
    survey_id: int,
    expected_sent: int,
    row: Callable[[bool], MessageRecord],
) -> bool:
    """The message row of reminder number ``expected_sent + 1`` (``row`` is given whether the
    customer is erased), unless the survey already holds that many reminder rows: each claimed
    count gets one row, so a record committed unheard and run again adds none. Returns whether
    the customer is erased."""
    with factory() as session, session.begin():
        erased = erased_customer(session, survey_id)
        recorded = session.scalar(
            select(func.count())
            .select_from(MessageRecord)
            .where(MessageRecord.survey_id == survey_id, MessageRecord.kind == "reminder")
        )
        if (recorded or 0) <= expected_sent:
            session.add(row(erased))
    return erased


def send_reminder(
    factory: sessionmaker[Session],
    channels: dict[ChannelName, Channel],
    wait_for_slot: Callable[[ChannelName], None],
    build: Build,
    survey_id: int,
    expected_sent: int,
    config: OperatorConfig,
    now: datetime,
) -> str:
    """One reminder, at most once: the row's reminder count is compare-and-set before the
    provider call, so a duplicate message (same ``expected_sent``) does nothing. Checked
    again after the rate limit wait; never retried (a retry could be a second copy)."""
    # Each transaction runs again on a new connection when its pooled one was dead
    # (models.session): a re-run claim finds its count taken and sends nothing (at most once),
    # the re-check only reads or hands its own count back, the record adds no second row.
    claimed = retry_on_disconnect(
        lambda: claim_reminder(factory, survey_id, expected_sent, config, now)
    )
    if not isinstance(claimed, ChannelName):
        return claimed
    channel = channels.get(claimed)
    if channel is None:
        return "channel off"
    wait_for_slot(claimed)
    message = retry_on_disconnect(
        lambda: recheck_reminder(factory, survey_id, expected_sent, build)
    )
    if not isinstance(message, OutboundMessage):
        SENDS.labels(claimed.value, "withdrawn").inc()
        return message
    try:
        receipt = timed_send(channel, message)
    except SendError as exc:
        # A reminder is best effort: never retried (a retry could be a second copy).
        SENDS.labels(claimed.value, _outcome_of(exc)).inc()
        log.warning("survey %s: reminder not sent: %s", survey_id, exc)
        failed = exc
        retry_on_disconnect(
            lambda: record_reminder(
                factory,
                survey_id,
                expected_sent,
                lambda _erased: MessageRecord(
                    survey_id=survey_id,
                    kind="reminder",
                    channel=message.channel.value,
                    provider=failed.provider,
                    status="unknown" if isinstance(failed, OutcomeUnknownError) else "failed",
                    error=str(failed)[:500],
                ),
            )
        )
        return "reminder failed"
    SENDS.labels(claimed.value, "sent").inc()
    erased = retry_on_disconnect(
        lambda: record_reminder(
            factory,
            survey_id,
            expected_sent,
            lambda gone: MessageRecord(
                survey_id=survey_id,
                kind="reminder",
                channel=message.channel.value,
                provider=receipt.provider,
                provider_message_id=None if gone else receipt.provider_message_id,
                status="accepted",
                segments=receipt.segments,
                body=message.body_text if receipt.provider == CONSOLE and not gone else None,
            ),
        )
    )
    log.info(
        "survey %s: reminder %d sent to %s",
        survey_id,
        expected_sent + 1,
        # Not even masked once the customer is erased.
        "an erased customer" if erased else masked(message.channel, message.to),
    )
    return "reminder sent"
