"""Sending one survey invitation: pick up, wait, claim and re-check, send, record. Never twice,
never without consent, never silently lost.

The order of steps is the product's promise:

1. **Pick up** the ``queued`` row: a duplicate queue message finds it in another state and does
   nothing. Its ``queued_at`` is renewed (a lease against the stuck-queue sweep).
2. **Wait** for a slot of the channel's rate limit, the row still ``queued``: a backlog of waits
   never leaves claims waiting that a sweep would take back, and a worker that dies here leaves
   a queued row that the sweep enqueues again.
3. **Claim and re-check** in one short transaction: the conditional update ``queued -> sending``
   (a second worker finds the row claimed and does nothing); the order is not cancelled, the
   customer not erased, consent for the channel still stands, the contact is valid, so a
   revocation, cancellation or erasure committed while the worker waited stops the send
   (``suppressed``, or the next consented channel; ``withdrawn``) before any provider request.
   The message is built from these fresh rows and the marker ``sending_at`` set: a ``sending``
   row has its provider call under way or done.
4. **Send** through the channel. Only an answer that proves nothing was created (429, a refused
   connection, a validation error) is retried or failed. Any other answer (5xx, 408, a connection
   lost after the request was written, a success without the message's id) may mean the message
   exists, and neither provider takes an idempotency key: the row stays ``sending`` and
   :meth:`Sender.settle` resolves it from the provider's evidence, never by sending again.
5. **Record** ``sending -> sent`` with the provider's message id. A customer erased during the
   provider call still counts as invited (the message did go out) but nothing personal is kept:
   no provider message id (it leads to the provider's copy, with the contact) and no body.

Transient errors put the row back to ``scheduled`` with its retry time in the row, so the
scheduler, not the broker's in-memory delay queue, brings it back.

Reminders (:meth:`Sender.send_reminder`) follow the same steps on an open invitation: claimed by
their count, re-checked after the rate limit wait (still open, so neither answered nor opted out;
consent, contact, order, erasure), never retried.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import (
    Channel,
    ChannelName,
    FoundMessage,
    MessageLookup,
    OutboundMessage,
    OutcomeUnknownError,
    PermanentSendError,
    SendError,
    SendReceipt,
    TransientSendError,
)
from channels.links import AnswerLinks
from channels.masking import mask_email, mask_phone
from channels.messages import render_email, render_sms
from config import OperatorConfig
from dispatch import timing
from dispatch.planning import choose_channel
from dispatch.ratelimit import InProcessRateLimiter, RateLimiter
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

log = logging.getLogger(__name__)
S = SurveyState

MAX_SEND_ATTEMPTS = 8
BASE_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(hours=1)

#: A lookup asks for messages created from this long before the send began (clock skew).
LOOKUP_MARGIN = timedelta(minutes=1)
#: Lookups for one unsettled send are spaced out, doubling from the first to the longest
#: interval; one last lookup is always made when the settle window ends.
LOOKUP_FIRST_INTERVAL = timedelta(minutes=1)
LOOKUP_MAX_INTERVAL = timedelta(minutes=15)


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


def erased_customer(session: Session, survey_id: int) -> bool:
    """Whether the survey's customer is erased, read under a share lock of the customer row.

    The erasure takes that row ``FOR UPDATE`` before it empties the survey's and messages'
    personal columns, so a writer holding this lock either sees the erasure, or commits first and
    has its personal data emptied by it (SQLite has a single writer anyway)."""
    customer_id = session.scalar(select(Survey.customer_id).where(Survey.id == survey_id))
    if customer_id is None:
        return True
    row = session.execute(
        select(Customer.id, Customer.erased_at)
        .where(Customer.id == customer_id)
        .with_for_update(read=True)
    ).first()
    return row is None or row.erased_at is not None


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
        # survey id -> (next lookup at, current interval); only the settling process uses it.
        self._lookups: dict[int, tuple[datetime, timedelta]] = {}
        self._lookups_lock = threading.Lock()

    # -- step 1: pick up, step 2: wait, step 3: claim and re-check ---------------------------
    def _pick_up(
        self, survey_id: int, config: OperatorConfig, now: datetime
    ) -> SendOutcome | ChannelName:
        """Before the rate-limit wait: a row that is not ``queued`` is a duplicate message (or
        settled already) and costs no slot; quiet hours send it back to ``scheduled``. Otherwise
        the row stays ``queued`` and its ``queued_at`` is renewed, a lease: the stuck-queue sweep
        enqueues again only rows queued for longer than its ``stuck_after``, so a worker waiting
        for its slot is not doubled, and a worker that dies while waiting leaves a row the sweep
        finds. Returns the channel to wait for."""
        with self.factory() as session, session.begin():
            survey = session.get(Survey, survey_id)
            if survey is None:
                return SendOutcome("missing", "no such survey")
            if survey.state != S.queued:
                return SendOutcome(survey.state, "not queued: nothing to do")
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
            session.execute(
                update(Survey)
                .where(Survey.id == survey_id, Survey.state == S.queued)
                .values(queued_at=now)
                .execution_options(synchronize_session=False)
            )
            return ChannelName(survey.channel)

    def _claim(
        self,
        survey_id: int,
        channel: ChannelName,
        config: OperatorConfig,
        now: datetime,
        *,
        mark: bool = True,
    ) -> SendOutcome | tuple[Survey, Customer, OutboundMessage | None]:
        """After the wait, in one short transaction: claim ``queued -> sending`` (a duplicate
        message, or a second worker, finds it claimed and does nothing), re-check on fresh rows
        (what was committed while this worker waited counts), build the message from them and
        set the marker ``sending_at`` that the provider may be called from now on.

        The row is locked first: a STOP committed meanwhile is seen by the consent re-check, or
        else finds the row with its marker and ends it ``opted_out`` (dispatch.responses). Claim
        and marker commit together, so a ``sending`` row always has its provider call under way
        or done, and the scheduler's sweep never takes back a claim whose worker is alive."""
        with self.factory() as session, session.begin():
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
            assert order is not None and customer is not None
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
            stop = self._recheck(session, survey, order, customer, config, now)
            if stop is not None:
                log.info("survey %s: stopped at claim time: %s", survey_id, stop.detail)
                return stop
            if not mark:
                return survey, customer, None
            message = self._message(survey, customer, config, now)
            survey.sending_at = now
            return survey, customer, message

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
    def _wait_for_slot(self, channel: ChannelName, config: OperatorConfig) -> None:
        self.rate_limiter.acquire(channel, config.rate_limits.for_channel(channel) or 1.0)

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
        picked = self._pick_up(survey_id, config, now)
        if isinstance(picked, SendOutcome):
            return picked
        channel = self.channels.get(picked)
        if channel is None:
            # The provider was switched off after planning: try the next channel, else fail.
            claimed_off = self._claim(survey_id, picked, config, now, mark=False)
            if isinstance(claimed_off, SendOutcome):
                return claimed_off
            survey, customer, _ = claimed_off
            return self._permanent(
                survey,
                customer,
                config,
                now,
                PermanentSendError(f"channel {survey.channel} is off", provider="config"),
            )
        # The slot is reserved before the claim: a claim is never left waiting for a slot.
        self._wait_for_slot(picked, config)
        claimed = self._claim(survey_id, picked, config, now)
        if isinstance(claimed, SendOutcome):
            return claimed
        survey, customer, message = claimed
        assert message is not None
        try:
            receipt = channel.send(message)
        except OutcomeUnknownError as exc:
            # Maybe sent. Never sent again: the reconciler settles it from the provider.
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
    def _commit_sent(
        self,
        survey_id: int,
        *,
        channel: str,
        provider: str,
        provider_message_id: str | None,
        segments: int | None,
        body: str | None,
        sent_at: datetime,
        reason: str,
        config: OperatorConfig,
        now: datetime,
    ) -> tuple[bool, bool]:
        """``sending -> sent`` and the invitation's message row. For a customer erased
        meanwhile, the fact and the counts only: no provider id, no body, no reminder.
        Returns (moved, erased).

        One invitation was accepted, so there is one invitation row per survey, whoever records
        it: the worker's own answer, a lookup that settled the send while that answer was still
        on its way, or two schedulers settling the same send. The survey row is locked (after the
        customer row, in the order the erasure takes them), so the second writer sees the first
        one's row and adds none."""
        reminder = config.survey.reminder
        with self.factory() as session, session.begin():
            erased = erased_customer(session, survey_id)
            kept_id = None if erased else provider_message_id
            session.execute(select(Survey.id).where(Survey.id == survey_id).with_for_update())
            recorded = session.scalar(
                select(MessageRecord.id).where(
                    MessageRecord.survey_id == survey_id, MessageRecord.kind == "invitation"
                )
            )
            moved = move(
                session,
                survey_id,
                S.sent,
                reason=reason,
                # send_unknown: the settle window ran out while this worker still waited for the
                # provider's answer; the answer proves the message went out.
                only_from=[S.sending, S.send_unknown],
                now=now,
                sent_at=sent_at,
                provider=provider,
                provider_message_id=kept_id,
                closes_at=sent_at + config.survey.response_window,
                next_reminder_at=(
                    sent_at + reminder.after if reminder.max > 0 and not erased else None
                ),
            )
            if recorded is None:
                session.add(
                    MessageRecord(
                        survey_id=survey_id,
                        kind="invitation",
                        channel=channel,
                        provider=provider,
                        provider_message_id=kept_id,
                        status="accepted",
                        segments=segments,
                        body=None if erased else body,
                    )
                )
        return bool(moved), erased

    def _record_sent(
        self,
        survey: Survey,
        message: OutboundMessage,
        receipt: SendReceipt,
        config: OperatorConfig,
        now: datetime,
    ) -> SendOutcome:
        moved, erased = self._commit_sent(
            survey.id,
            channel=message.channel.value,
            provider=receipt.provider,
            provider_message_id=receipt.provider_message_id,
            segments=receipt.segments,
            # Only the console keeps what it "sent" (there is no provider copy to look at).
            body=message.body_text if receipt.provider == "console" else None,
            sent_at=now,
            reason=f"accepted by {receipt.provider}",
            config=config,
            now=now,
        )
        if erased:
            log.info(
                "survey %s: sent while the customer was erased; nothing personal kept", survey.id
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
        return SendOutcome(S.sent, receipt.provider_message_id or "accepted without an id")

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
        from models.customers import record_consent

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
                    recorded_at=now,
                )
            outcome = self._fallback_or_end(session, row, fresh, config, now, why, S.failed)
        log.warning("survey %s: permanent send error: %s", survey.id, why)
        return outcome

    # -- the reconciler --------------------------------------------------------------------------
    def settle(
        self, survey_id: int, config: OperatorConfig, now: datetime, give_up_after: timedelta
    ) -> str:
        """Resolve a send left in ``sending`` (an ambiguous provider answer, a crash or a timeout
        after the provider call); returns what it did and never raises for a provider problem.

        A provider callback may already have moved it on. Otherwise, when the channel can be
        asked (:class:`~channels.base.MessageLookup`, Twilio's message list), look for *this*
        message: same recipient, same sender, the exact body (rendered again here, the way the
        send rendered it, and compared in memory), created after the send began, and not already
        recorded for another survey. Found: ``sent``. Lookups are spaced out while waiting; one
        that fails is logged and the clock keeps running. Nothing found ``give_up_after`` after
        the send began: ``send_unknown``, never a second send (a late callback can still move it
        to sent).
        """
        if self._give_back_if_never_called(survey_id, now):
            return "queued again: the provider was never called"
        with self.factory() as session:
            survey = session.get(Survey, survey_id)
            if survey is None or survey.state != S.sending:
                self._forget_lookups(survey_id)
                return "settled already"
            customer = session.get(Customer, survey.customer_id)
            started = survey.sending_at or now
            channel_name = ChannelName(survey.channel)
            channel = self.channels.get(channel_name)
            expected = (
                self._expected_message(survey, customer, config, now)
                if isinstance(channel, MessageLookup)
                else None
            )
        overdue = now - started >= give_up_after
        lookup_failed = False
        if (
            expected is not None
            and isinstance(channel, MessageLookup)
            and (overdue or self._lookup_due(survey_id, now))
        ):
            try:
                hits = channel.find_sent_messages(expected, started - LOOKUP_MARGIN)
            except Exception as exc:  # whatever the provider or its client raised
                lookup_failed = True
                log.warning(
                    "survey %s: provider lookup failed (%s: %s); the settle clock keeps running",
                    survey_id,
                    type(exc).__name__,
                    exc if isinstance(exc, SendError) else "",
                )
            else:
                ours = self._not_recorded_elsewhere(survey_id, hits)
                if ours is not None:
                    provider = str(getattr(channel, "provider", "unknown"))
                    return self._record_found(
                        survey_id, channel_name, provider, ours, started, config, now
                    )
        if not overdue:
            return (
                "lookup failed; waiting for a callback"
                if lookup_failed
                else "waiting for a callback"
            )
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
        self._forget_lookups(survey_id)
        log.error("ALERT survey %s: send outcome unknown; not re-sent", survey_id)
        return "send_unknown"

    def _give_back_if_never_called(self, survey_id: int, now: datetime) -> bool:
        """A claim whose worker stopped before the provider call (no ``sending_at`` marker: a
        crash or a restart during the rate-limit wait) goes back to ``queued``; the scheduler
        enqueues it again. The row is locked first, so a worker setting its marker at this moment
        either wins (and this does nothing) or finds the row queued (and sends nothing)."""
        with self.factory() as session, session.begin():
            survey = session.scalar(select(Survey).where(Survey.id == survey_id).with_for_update())
            if survey is None or survey.state != S.sending or survey.sending_at is not None:
                return False
            move(
                session,
                survey_id,
                S.queued,
                reason="the worker stopped before calling the provider",
                only_from=[S.sending],
                now=now,
                queued_at=now,
                # The provider was never called: not an attempt.
                attempts=max(survey.attempts - 1, 0),
            )
        log.warning("survey %s: claimed but never sent; queued again", survey_id)
        return True

    def _expected_message(
        self, survey: Survey, customer: Customer | None, config: OperatorConfig, now: datetime
    ) -> OutboundMessage | None:
        """The invitation as the send rendered it, or ``None`` when it cannot be looked for (an
        erased customer, no valid contact any more)."""
        if customer is None or customer.erased_at is not None:
            return None
        contact, _ = customer.contact_for(survey.channel)
        if contact is None:
            return None
        try:
            return self._message(survey, customer, config, now)
        except Exception as exc:
            log.warning("survey %s: cannot render the message to look for: %s", survey.id, exc)
            return None

    def _lookup_due(self, survey_id: int, now: datetime) -> bool:
        with self._lookups_lock:
            entry = self._lookups.get(survey_id)
            if entry is not None and now < entry[0]:
                return False
            interval = (
                LOOKUP_FIRST_INTERVAL if entry is None else min(entry[1] * 2, LOOKUP_MAX_INTERVAL)
            )
            self._lookups[survey_id] = (now + interval, interval)
            # Sends settled by a callback are never asked about again: drop stale entries.
            stale = [
                k for k, (at, _) in self._lookups.items() if at < now - LOOKUP_MAX_INTERVAL * 4
            ]
            for key in stale:
                del self._lookups[key]
            return True

    def _forget_lookups(self, survey_id: int) -> None:
        with self._lookups_lock:
            self._lookups.pop(survey_id, None)

    def _not_recorded_elsewhere(
        self, survey_id: int, hits: list[FoundMessage]
    ) -> FoundMessage | None:
        """The first hit whose id no other survey's row or message already holds."""
        if not hits:
            return None
        ids = [hit.provider_message_id for hit in hits]
        with self.factory() as session:
            taken = set(
                session.scalars(
                    select(Survey.provider_message_id).where(
                        Survey.provider_message_id.in_(ids), Survey.id != survey_id
                    )
                )
            ) | set(
                session.scalars(
                    select(MessageRecord.provider_message_id).where(
                        MessageRecord.provider_message_id.in_(ids),
                        MessageRecord.survey_id != survey_id,
                    )
                )
            )
        return next((hit for hit in hits if hit.provider_message_id not in taken), None)

    def _record_found(
        self,
        survey_id: int,
        channel: ChannelName,
        provider: str,
        found: FoundMessage,
        started: datetime,
        config: OperatorConfig,
        now: datetime,
    ) -> str:
        self._commit_sent(
            survey_id,
            channel=channel.value,
            provider=provider,
            provider_message_id=found.provider_message_id,
            segments=None,
            body=None,
            sent_at=found.created_at or started,
            reason="found in the provider's log",
            config=config,
            now=now,
        )
        self._forget_lookups(survey_id)
        # Not the provider's message id: it leads to the provider's copy of the message.
        log.info("survey %s: found in %s's log", survey_id, provider)
        return "sent (found by lookup)"

    # -- reminders -------------------------------------------------------------------------------
    def _reminder_stop(self, session: Session, survey: Survey | None) -> str | None:
        """Why no reminder may go now, or ``None``: the invitation must still be open (not
        answered, opted out, bounced or closed), the order standing, the customer not erased,
        consent for the channel current and the contact valid."""
        if survey is None or survey.state not in OPEN_STATES:
            return "not open: no reminder"
        order = session.get(Order, survey.order_id)
        customer = session.get(Customer, survey.customer_id)
        if customer is None or customer.erased_at is not None:
            return "customer erased: no reminder"
        if order is not None and order.cancelled_at is not None:
            return f"order {order.cancel_kind}: no reminder"
        _, status = customer.contact_for(survey.channel)
        if not current_consent(session, customer.id, survey.channel) or (
            status != ContactStatus.valid
        ):
            return "no consent or contact: no reminder"
        return None

    def _claim_reminder(
        self, survey_id: int, expected_sent: int, config: OperatorConfig, now: datetime
    ) -> str | ChannelName:
        reminder = config.survey.reminder
        with self.factory() as session, session.begin():
            survey = session.get(Survey, survey_id)
            stop = self._reminder_stop(session, survey)
            if stop is not None:
                if survey is not None:
                    survey.next_reminder_at = None
                return stop
            assert survey is not None
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
            return ChannelName(survey.channel)

    def _recheck_reminder(
        self, survey_id: int, expected_sent: int, config: OperatorConfig, now: datetime
    ) -> str | OutboundMessage:
        """After the rate limit wait, in a fresh transaction: the reminder still wanted, built
        from fresh rows; else the claimed count handed back and no more reminders."""
        with self.factory() as session, session.begin():
            survey = session.get(Survey, survey_id)
            stop = self._reminder_stop(session, survey)
            if stop is not None:
                session.execute(
                    update(Survey)
                    .where(Survey.id == survey_id, Survey.reminders_sent == expected_sent + 1)
                    .values(reminders_sent=expected_sent, next_reminder_at=None)
                    .execution_options(synchronize_session=False)
                )
                log.info(
                    "survey %s: reminder stopped after the rate limit wait: %s", survey_id, stop
                )
                return stop
            assert survey is not None
            customer = session.get(Customer, survey.customer_id)
            assert customer is not None
            return self._message(survey, customer, config, now, is_reminder=True)

    def send_reminder(
        self,
        survey_id: int,
        expected_sent: int,
        config: OperatorConfig,
        now: datetime | None = None,
    ) -> str:
        """One reminder, at most once: the row's reminder count is compare-and-set before the
        provider call, so a duplicate message (same ``expected_sent``) does nothing. Checked
        again after the rate limit wait; never retried (a retry could be a second copy)."""
        now = now or utcnow()
        claimed = self._claim_reminder(survey_id, expected_sent, config, now)
        if not isinstance(claimed, ChannelName):
            return claimed
        channel = self.channels.get(claimed)
        if channel is None:
            return "channel off"
        self._wait_for_slot(claimed, config)
        message = self._recheck_reminder(survey_id, expected_sent, config, now)
        if not isinstance(message, OutboundMessage):
            return message
        try:
            receipt = channel.send(message)
        except SendError as exc:
            # A reminder is best effort: never retried (a retry could be a second copy).
            log.warning("survey %s: reminder not sent: %s", survey_id, exc)
            with self.factory() as session, session.begin():
                session.add(
                    MessageRecord(
                        survey_id=survey_id,
                        kind="reminder",
                        channel=message.channel.value,
                        provider=exc.provider,
                        status="unknown" if isinstance(exc, OutcomeUnknownError) else "failed",
                        error=str(exc)[:500],
                    )
                )
            return "reminder failed"
        with self.factory() as session, session.begin():
            erased = erased_customer(session, survey_id)
            session.add(
                MessageRecord(
                    survey_id=survey_id,
                    kind="reminder",
                    channel=message.channel.value,
                    provider=receipt.provider,
                    provider_message_id=None if erased else receipt.provider_message_id,
                    status="accepted",
                    segments=receipt.segments,
                    body=(
                        message.body_text if receipt.provider == "console" and not erased else None
                    ),
                )
            )
        log.info(
            "survey %s: reminder %d sent to %s",
            survey_id,
            expected_sent + 1,
            masked(message.channel, message.to),
        )
        return "reminder sent"
