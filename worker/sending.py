"""Sending one survey invitation: claim, re-check, send, record. Never twice, never without consent.

The order of steps is the product's promise:

1. **Claim** the row with a conditional update ``queued -> sending`` and commit. A duplicate
   queue message, or a second worker, finds the row already claimed and does nothing.
2. **Re-check** at this moment: the order is not cancelled, consent for the channel still stands,
   the contact is valid, and it is not the recipient's quiet hours.
3. **Send** through the channel. Twilio has no idempotency key, so a request that may have reached
   the provider (a read timeout) is *not* retried: the row stays ``sending`` and the reconciler
   resolves it from the provider's callback or a lookup, else it ends ``send_unknown``.
4. **Record** ``sending -> sent`` with the provider's message id.

Transient errors put the row back to ``scheduled`` with its retry time in the row, so the
scheduler, not the broker's in-memory delay queue, brings it back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import (
    Channel,
    ChannelName,
    OutboundMessage,
    OutcomeUnknownError,
    PermanentSendError,
    SendReceipt,
    TransientSendError,
)
from channels.links import AnswerLinks
from channels.masking import mask_email, mask_phone
from channels.messages import render_email, render_sms
from models import (
    Customer,
    MessageRecord,
    Order,
    Survey,
    SurveyState,
    current_consent,
    move,
    utcnow,
)
from models.customers import ContactStatus
from models.lifecycle import OPEN_STATES
from worker import timing
from worker.config import OperatorConfig
from worker.planning import choose_channel
from worker.ratelimit import InProcessRateLimiter, RateLimiter

log = logging.getLogger(__name__)
S = SurveyState

MAX_SEND_ATTEMPTS = 8
BASE_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(hours=1)


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


def masked(channel: str, contact: str) -> str:
    return mask_email(contact) if channel == ChannelName.email else mask_phone(contact)


class Sender:
    def __init__(
        self,
        factory: sessionmaker[Session],
        channels: dict[ChannelName, Channel],
        links: AnswerLinks,
        public_base_url: str,
        rate_limiter: RateLimiter | None = None,
    ) -> None:
        self.factory = factory
        self.channels = channels
        self.links = links
        self.public_base_url = public_base_url.rstrip("/")
        self.rate_limiter = rate_limiter or InProcessRateLimiter()

    # -- step 1 and 2 ---------------------------------------------------------------------------
    def _claim(
        self, survey_id: int, config: OperatorConfig, now: datetime
    ) -> SendOutcome | tuple[Survey, Customer]:
        with self.factory() as session, session.begin():
            survey = session.get(Survey, survey_id)
            if survey is None:
                return SendOutcome("missing", "no such survey")
            if survey.state != S.queued:
                return SendOutcome(survey.state, "not queued: nothing to do")
            order = session.get(Order, survey.order_id)
            customer = session.get(Customer, survey.customer_id)
            assert order is not None and customer is not None
            allowed = timing.next_allowed_moment(
                now,
                timing.resolve_timezone(
                    survey.timezone, None, None, config.schedule.default_timezone
                ),
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
            if not move(
                session,
                survey_id,
                S.sending,
                only_from=[S.queued],
                now=now,
                sending_at=now,
                attempts=survey.attempts + 1,
            ):
                return SendOutcome("lost", "claimed by another worker")
            stop = self._recheck(session, survey, order, customer, config, now)
            if stop is not None:
                return stop
            session.refresh(survey)
            return survey, customer

    def _recheck(
        self,
        session: Session,
        survey: Survey,
        order: Order,
        customer: Customer,
        config: OperatorConfig,
        now: datetime,
    ) -> SendOutcome | None:
        if order.cancelled_at is not None or customer.erased_at is not None:
            reason = "customer erased" if customer.erased_at else f"order {order.cancel_kind}"
            move(
                session,
                survey.id,
                S.withdrawn,
                reason=reason,
                only_from=[S.sending],
                now=now,
                final_reason=reason,
            )
            return SendOutcome(S.withdrawn, reason)
        consented = current_consent(session, customer.id, survey.channel)
        _, status = customer.contact_for(survey.channel)
        if consented and status == ContactStatus.valid:
            return None
        why = f"{survey.channel} consent revoked" if not consented else "contact not valid"
        return self._fallback_or_end(session, survey, customer, config, now, why, S.suppressed)

    def _fallback_or_end(
        self,
        session: Session,
        survey: Survey,
        customer: Customer,
        config: OperatorConfig,
        now: datetime,
        why: str,
        final: SurveyState,
    ) -> SendOutcome:
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
        move(
            session, survey.id, final, reason=why, only_from=[S.sending], now=now, final_reason=why
        )
        return SendOutcome(final, why)

    # -- step 3 ---------------------------------------------------------------------------------
    def _message(
        self,
        survey: Survey,
        customer: Customer,
        config: OperatorConfig,
        now: datetime,
        *,
        is_reminder: bool = False,
    ) -> OutboundMessage:
        channel = ChannelName(survey.channel)
        contact, _ = customer.contact_for(survey.channel)
        assert contact is not None
        expires = survey.closes_at or now + config.survey.response_window
        locale = customer.locale or "en"
        if channel == ChannelName.sms:
            return OutboundMessage(
                survey_id=survey.id,
                channel=channel,
                to=contact,
                body_text=render_sms(
                    locale, config.survey.shop_name, customer.first_name, is_reminder
                ),
                status_callback_url=(
                    f"{self.public_base_url}/webhooks/twilio/status?survey_id={survey.id}"
                ),
                is_reminder=is_reminder,
            )
        score_links = [self.links.url_for(survey.id, expires, score=n) for n in range(11)]
        unsubscribe = self.links.unsubscribe_url(survey.id, expires)
        email = render_email(
            locale,
            config.survey.shop_name,
            customer.first_name,
            score_links,
            unsubscribe,
            is_reminder,
        )
        return OutboundMessage(
            survey_id=survey.id,
            channel=channel,
            to=contact,
            subject=email.subject,
            body_text=email.text,
            body_html=email.html,
            unsubscribe_url=unsubscribe,
            is_reminder=is_reminder,
        )

    def send(
        self, survey_id: int, config: OperatorConfig, now: datetime | None = None
    ) -> SendOutcome:
        now = now or utcnow()
        claimed = self._claim(survey_id, config, now)
        if isinstance(claimed, SendOutcome):
            return claimed
        survey, customer = claimed
        try:
            message = self._message(survey, customer, config, now)
        except Exception:
            with self.factory() as session, session.begin():
                move(
                    session,
                    survey_id,
                    S.queued,
                    reason="could not build the message",
                    only_from=[S.sending],
                    now=now,
                )
            raise
        channel = self.channels.get(message.channel)
        if channel is None:
            # The provider was switched off after planning: try the next channel, else fail.
            return self._permanent(
                survey,
                customer,
                config,
                now,
                PermanentSendError(f"channel {message.channel} is off", provider="config"),
            )
        self.rate_limiter.acquire(
            message.channel, config.rate_limits.for_channel(message.channel) or 1.0
        )
        try:
            receipt = channel.send(message)
        except OutcomeUnknownError as exc:
            # Maybe sent. Never retried blindly: the reconciler settles it.
            log.warning(
                "survey %s: send outcome unknown (%s); left for the reconciler", survey_id, exc
            )
            return SendOutcome(S.sending, "outcome unknown; the reconciler will settle it")
        except TransientSendError as exc:
            return self._transient(survey, now, exc)
        except PermanentSendError as exc:
            return self._permanent(survey, customer, config, now, exc)
        return self._record_sent(survey, message, receipt, config, now)

    # -- step 4 ---------------------------------------------------------------------------------
    def _record_sent(
        self,
        survey: Survey,
        message: OutboundMessage,
        receipt: SendReceipt,
        config: OperatorConfig,
        now: datetime,
    ) -> SendOutcome:
        reminder = config.survey.reminder
        with self.factory() as session, session.begin():
            moved = move(
                session,
                survey.id,
                S.sent,
                reason=f"accepted by {receipt.provider}",
                only_from=[S.sending],
                now=now,
                sent_at=now,
                provider=receipt.provider,
                provider_message_id=receipt.provider_message_id,
                closes_at=now + config.survey.response_window,
                next_reminder_at=(now + reminder.after) if reminder.max > 0 else None,
            )
            session.add(
                MessageRecord(
                    survey_id=survey.id,
                    kind="invitation",
                    channel=message.channel.value,
                    provider=receipt.provider,
                    provider_message_id=receipt.provider_message_id,
                    status="accepted",
                    segments=receipt.segments,
                    body=message.body_text if receipt.provider == "console" else None,
                )
            )
        if not moved:
            # A callback for this message already moved the row on (sent/delivered): fine.
            log.info("survey %s: sent; state was already advanced by a callback", survey.id)
        log.info(
            "survey %s sent by %s to %s",
            survey.id,
            receipt.provider,
            masked(message.channel, message.to),
        )
        return SendOutcome(S.sent, receipt.provider_message_id)

    def _transient(self, survey: Survey, now: datetime, exc: TransientSendError) -> SendOutcome:
        with self.factory() as session, session.begin():
            if survey.attempts >= MAX_SEND_ATTEMPTS:
                why = f"gave up after {survey.attempts} attempts: {exc}"
                move(
                    session,
                    survey.id,
                    S.failed,
                    reason=why,
                    only_from=[S.sending],
                    now=now,
                    final_reason=why,
                )
                log.error("ALERT survey %s failed: %s", survey.id, why)
                return SendOutcome(S.failed, why)
            due = now + backoff(survey.attempts, exc.retry_after_seconds)
            move(
                session,
                survey.id,
                S.scheduled,
                reason=f"transient: {exc}",
                only_from=[S.sending],
                now=now,
                due_at=due,
            )
        log.warning(
            "survey %s: transient send error (%s); retry at %s", survey.id, exc, due.isoformat()
        )
        return SendOutcome(S.scheduled, f"retry at {due.isoformat()}")

    def _permanent(
        self,
        survey: Survey,
        customer: Customer,
        config: OperatorConfig,
        now: datetime,
        exc: PermanentSendError,
    ) -> SendOutcome:
        from ingest.apply import record_consent

        why = f"{exc.provider} error {exc.code}: {exc}" if exc.code else f"{exc.provider}: {exc}"
        with self.factory() as session, session.begin():
            fresh = session.get(Customer, customer.id)
            row = session.get(Survey, survey.id)
            assert fresh is not None and row is not None
            if exc.revokes_consent:
                # The provider says this recipient opted out (Twilio 21610): that is evidence.
                record_consent(
                    session,
                    fresh,
                    {survey.channel: False},
                    source=exc.provider,
                    text_version=None,
                    captured_at=now,
                    evidence_kind="provider",
                    evidence_ref=f"error {exc.code}",
                )
            outcome = self._fallback_or_end(session, row, fresh, config, now, why, S.failed)
        log.warning("survey %s: permanent send error: %s", survey.id, why)
        return outcome

    # -- the reconciler --------------------------------------------------------------------------
    def settle(
        self, survey_id: int, config: OperatorConfig, now: datetime, give_up_after: timedelta
    ) -> str:
        """Resolve a send left in ``sending`` (a crash or a timeout after the provider call).

        A provider callback may already have moved it on. Otherwise ask the provider when it can
        be asked (Twilio's message list, by recipient and time); found: ``sent``. Not found and
        older than ``give_up_after``: ``send_unknown`` (never re-sent: a second copy is worse
        than an unknown outcome, and a late callback can still move it to sent).
        """
        with self.factory() as session:
            survey = session.get(Survey, survey_id)
            if survey is None or survey.state != S.sending:
                return "settled already"
            customer = session.get(Customer, survey.customer_id)
            assert customer is not None
            contact, _ = customer.contact_for(survey.channel)
            started = survey.sending_at or now
        channel = self.channels.get(ChannelName(survey.channel))
        lookup = getattr(channel, "find_recent_messages", None)
        if lookup is not None and contact is not None:
            try:
                found = lookup(contact, started - timedelta(minutes=1))
            except (TransientSendError, PermanentSendError) as exc:
                log.warning(
                    "survey %s: provider lookup failed (%s); will try again", survey_id, exc
                )
                found = None
            if found:
                newest = found[0]
                with self.factory() as session, session.begin():
                    move(
                        session,
                        survey_id,
                        S.sent,
                        reason="found in the provider's log",
                        only_from=[S.sending],
                        now=now,
                        sent_at=newest.date_created or started,
                        provider=getattr(channel, "provider", None),
                        provider_message_id=newest.sid,
                        closes_at=now + config.survey.response_window,
                    )
                return "sent (found by lookup)"
            if found is None:
                return "lookup failed"
        if now - started < give_up_after:
            return "waiting for a callback"
        why = f"no callback and no provider record {give_up_after} after sending began"
        with self.factory() as session, session.begin():
            move(
                session,
                survey_id,
                S.send_unknown,
                reason=why,
                only_from=[S.sending],
                now=now,
                final_reason=why,
            )
        log.error("ALERT survey %s: send outcome unknown; not re-sent", survey_id)
        return "send_unknown"

    # -- reminders -------------------------------------------------------------------------------
    def send_reminder(
        self,
        survey_id: int,
        expected_sent: int,
        config: OperatorConfig,
        now: datetime | None = None,
    ) -> str:
        """One reminder, at most once: the row's reminder count is compare-and-set before the
        provider call, so a duplicate message (same ``expected_sent``) does nothing."""
        now = now or utcnow()
        reminder = config.survey.reminder
        with self.factory() as session, session.begin():
            survey = session.get(Survey, survey_id)
            if survey is None or survey.state not in OPEN_STATES:
                return "not open: no reminder"  # answered, opted out, bounced or closed
            customer = session.get(Customer, survey.customer_id)
            assert customer is not None
            _, status = customer.contact_for(survey.channel)
            if not current_consent(session, customer.id, survey.channel) or (
                status != ContactStatus.valid
            ):
                survey.next_reminder_at = None
                return "no consent or contact: no reminder"
            if expected_sent >= reminder.max:
                survey.next_reminder_at = None
                return "reminders used up"
            tz = timing.resolve_timezone(
                survey.timezone, None, None, config.schedule.default_timezone
            )
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
            session.refresh(survey)
            message = self._message(survey, customer, config, now, is_reminder=True)
        channel = self.channels.get(message.channel)
        if channel is None:
            return "channel off"
        self.rate_limiter.acquire(
            message.channel, config.rate_limits.for_channel(message.channel) or 1.0
        )
        try:
            receipt = channel.send(message)
        except (TransientSendError, PermanentSendError, OutcomeUnknownError) as exc:
            # A reminder is best effort: never retried (a retry could be a second copy).
            log.warning("survey %s: reminder not sent: %s", survey_id, exc)
            with self.factory() as session, session.begin():
                session.add(
                    MessageRecord(
                        survey_id=survey_id,
                        kind="reminder",
                        channel=message.channel.value,
                        provider=exc.provider,
                        status="failed",
                        error=str(exc)[:500],
                    )
                )
            return "reminder failed"
        with self.factory() as session, session.begin():
            session.add(
                MessageRecord(
                    survey_id=survey_id,
                    kind="reminder",
                    channel=message.channel.value,
                    provider=receipt.provider,
                    provider_message_id=receipt.provider_message_id,
                    status="accepted",
                    segments=receipt.segments,
                    body=message.body_text if receipt.provider == "console" else None,
                )
            )
        log.info(
            "survey %s: reminder %d sent to %s",
            survey_id,
            expected_sent + 1,
            masked(message.channel, message.to),
        )
        return "reminder sent"
