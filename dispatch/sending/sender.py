"""The :class:`Sender`: one invitation or reminder through its steps, in the order the package
docstring (:mod:`dispatch.sending`) gives, and the reconciler's entry point
(:meth:`Sender.settle`). The steps live in the modules beside this one."""

from __future__ import annotations

from datetime import datetime, timedelta

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
from channels.reconcile import status_callback_url
from config import OperatorConfig
from dispatch.ratelimit import InProcessRateLimiter, RateLimiter
from dispatch.sending.claim_one import take_back_unheard_claim
from dispatch.sending.claims import claim, pick_up
from dispatch.sending.common import SendInvariantError, SendOutcome, log, timed_send
from dispatch.sending.message import build_message
from dispatch.sending.records import record_permanent, record_sent, record_transient
from dispatch.sending.reminders import send_reminder as send_one_reminder
from dispatch.sending.settle import LookupSchedule
from dispatch.sending.settle import settle as settle_send
from logs.metrics import SENDS
from models import Customer, Survey, SurveyState, utcnow
from models.session import retry_on_disconnect

S = SurveyState


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
        self._lookups = LookupSchedule()

    def send(
        self, survey_id: int, config: OperatorConfig, now: datetime | None = None
    ) -> SendOutcome:
        now = now or utcnow()
        # Each transaction of a send is run again when its pooled connection turned out dead
        # (models.session): all of them are compare-and-sets, safe to repeat, even when the
        # lost one was committed unheard (the claim takes such a claim of its own back first;
        # the record adds no second message row; a permanent refusal's revocation is evidence
        # that may be appended twice).
        picked = retry_on_disconnect(lambda: pick_up(self.factory, survey_id, config, now))
        if isinstance(picked, SendOutcome):
            return picked
        channel = self.channels.get(picked)
        if channel is None:
            # The provider was switched off after planning: try the next channel, else fail.
            claimed_off = self._claim(survey_id, picked, config, now, mark=False)
            if isinstance(claimed_off, SendOutcome):
                return claimed_off
            survey, customer, _ = claimed_off
            off = PermanentSendError(f"channel {survey.channel} is off", provider="config")
            return retry_on_disconnect(
                lambda: record_permanent(self.factory, survey, customer, config, now, off)
            )
        # The slot is reserved before the claim: a claim is never left waiting for a slot.
        self._wait_for_slot(picked, config)
        claimed = self._claim(survey_id, picked, config, now)
        if isinstance(claimed, SendOutcome):
            return claimed
        survey, customer, message = claimed
        if message is None:
            raise SendInvariantError(f"survey {survey_id}: claimed for sending without a message")
        try:
            receipt = timed_send(channel, message)
        except OutcomeUnknownError as exc:
            # Maybe sent. Never sent again: the reconciler settles it from the provider.
            SENDS.labels(picked.value, "unknown").inc()
            log.warning(
                "survey %s: send outcome unknown (%s); left for the reconciler", survey_id, exc
            )
            return SendOutcome(S.sending, "outcome unknown; the reconciler will settle it")
        except TransientSendError as exc:
            SENDS.labels(picked.value, "transient").inc()
            transient = exc
            return retry_on_disconnect(
                lambda: record_transient(self.factory, survey, now, transient)
            )
        except PermanentSendError as exc:
            SENDS.labels(picked.value, "permanent").inc()
            permanent = exc
            return retry_on_disconnect(
                lambda: record_permanent(self.factory, survey, customer, config, now, permanent)
            )
        SENDS.labels(picked.value, "sent").inc()
        return self._record_sent(survey, message, receipt, config, now)

    def settle(
        self, survey_id: int, config: OperatorConfig, now: datetime, give_up_after: timedelta
    ) -> str:
        """Resolve a send left in ``sending`` from the provider's evidence, never by sending
        again (:func:`dispatch.sending.settle.settle`)."""
        return settle_send(
            self.factory,
            self.channels,
            self._lookups,
            lambda survey, customer: self._message(survey, customer, config, now),
            survey_id,
            config,
            now,
            give_up_after,
        )

    def send_reminder(
        self,
        survey_id: int,
        expected_sent: int,
        config: OperatorConfig,
        now: datetime | None = None,
    ) -> str:
        """One reminder, at most once, never retried
        (:func:`dispatch.sending.reminders.send_reminder`)."""
        now = now or utcnow()
        return send_one_reminder(
            self.factory,
            self.channels,
            lambda channel: self._wait_for_slot(channel, config),
            lambda survey, customer: self._message(survey, customer, config, now, is_reminder=True),
            survey_id,
            expected_sent,
            config,
            now,
        )

    # -- the steps, bound to this sender's rows, channels and links ----------------------------
    def _wait_for_slot(self, channel: ChannelName, config: OperatorConfig) -> None:
        self.rate_limiter.acquire(channel, config.rate_limits.for_channel(channel) or 1.0)

    def _claim(
        self,
        survey_id: int,
        channel: ChannelName,
        config: OperatorConfig,
        now: datetime,
        *,
        mark: bool = True,
    ) -> SendOutcome | tuple[Survey, Customer, OutboundMessage | None]:
        """Claim and re-check (:func:`dispatch.sending.claims.claim`); with ``mark``, build the
        message and set the marker that the provider may be called."""
        build = (
            (lambda survey, customer: self._message(survey, customer, config, now))
            if mark
            else None
        )
        runs = 0

        def work() -> SendOutcome | tuple[Survey, Customer, OutboundMessage | None]:
            nonlocal runs
            runs += 1
            if runs > 1 and build is not None:
                # The lost connection may have committed the claim unheard: take it back.
                take_back_unheard_claim(self.factory, survey_id, now)
            return claim(self.factory, survey_id, channel, config, now, build)

        return retry_on_disconnect(work)

    def _message(
        self,
        survey: Survey,
        customer: Customer,
        config: OperatorConfig,
        now: datetime,
        *,
        is_reminder: bool = False,
    ) -> OutboundMessage:
        callback = status_callback_url(
            self.channels.get(ChannelName(survey.channel)), self.public_base_url, survey.id
        )
        return build_message(
            survey, customer, config, now, self.links, callback, is_reminder=is_reminder
        )

    def _record_sent(
        self,
        survey: Survey,
        message: OutboundMessage,
        receipt: SendReceipt,
        config: OperatorConfig,
        now: datetime,
    ) -> SendOutcome:
        """Steps 4 and 5 once the provider accepted
        (:func:`dispatch.sending.records.record_sent`)."""
        return retry_on_disconnect(
            lambda: record_sent(self.factory, survey, message, receipt, config, now)
        )
