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

from sqlalchemy import select
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
from worker import timing
from worker.config import OperatorConfig
from worker.planning import choose_channel

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
    ) -> None:
        self.factory = factory
        self.channels = channels
        self.links = links
        self.public_base_url = public_base_url.rstrip("/")

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
        channel = self.channels[message.channel]
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


def pending_in_sending(session: Session, older_than: datetime) -> list[Survey]:
    return list(
        session.scalars(
            select(Survey).where(Survey.state == S.sending, Survey.sending_at < older_than)
        )
    )
