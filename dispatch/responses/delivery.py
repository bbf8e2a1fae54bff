"""Delivery events (status callbacks, email events) applied to surveys and messages.

An event is already normalised to :class:`~channels.base.DeliveryEvent` by its channel. The
invitation's delivery state moves forward only (the channel's rank table decides; duplicates and
late callbacks are no-ops), a failure report ends it ``undeliverable`` with the provider's code in
``final_reason``, a callback that overtakes our own commit (``sending``) or settles a
``send_unknown`` moves it to ``sent``/``delivered`` with the provider's message id. Unsubscribes
and spam reports revoke email consent (and end an open invitation ``opted_out``); opens and
clicks are engagement only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from channels.base import DeliveryEvent, DeliveryEventKind, WebhookSource
from channels.webhook_sources import delivery_rules
from config import OperatorConfig
from dispatch.consent import subject_of
from dispatch.responses.common import (
    _UNCONFIRMED,
    CONSENT_KINDS,
    Applied,
    K,
    S,
    _lock_survey,
)
from dispatch.stopping import on_consent_revoked
from models import (
    Customer,
    MessageRecord,
    Survey,
    SurveyState,
    move,
)
from models.customers import record_consent
from models.lifecycle import OPEN_STATES

log = logging.getLogger(__name__)

#: Where a delivery event takes the invitation's survey (kinds not listed never move it).
_DELIVERY_TARGET: Final[Mapping[DeliveryEventKind, SurveyState]] = {
    K.queued: S.sent,
    K.sent: S.sent,
    K.deferred: S.sent,
    K.delivered: S.delivered,
    K.undeliverable: S.undeliverable,
}

_KIND_VALUES: Final = frozenset(k.value for k in K)

# --------------------------------------------------------------------------------------------
# Delivery events (SMS status callbacks, email events)
# --------------------------------------------------------------------------------------------


def _survey_for_event(session: Session, event: DeliveryEvent) -> Survey | None:
    if event.survey_id is not None:
        survey = _lock_survey(session, event.survey_id)
        if survey is not None:
            return survey
    if event.provider_message_id is None:
        return None
    # The lowest id when several share the message id, as the replay's runs find it.
    survey_id = session.scalar(
        select(Survey.id)
        .where(Survey.provider_message_id == event.provider_message_id)
        .order_by(Survey.id)
        .limit(1)
    ) or session.scalar(
        select(MessageRecord.survey_id)
        .where(
            MessageRecord.provider_message_id == event.provider_message_id,
            MessageRecord.provider == event.provider,
        )
        .order_by(MessageRecord.id)
        .limit(1)
    )
    return _lock_survey(session, survey_id) if survey_id is not None else None


def _update_message_status(session: Session, event: DeliveryEvent, rules: WebhookSource) -> None:
    """The per-message delivery state on ``messages`` (invitations and reminders alike)."""
    if event.provider_message_id is None:
        return
    record = session.scalar(
        select(MessageRecord)
        .where(
            MessageRecord.provider_message_id == event.provider_message_id,
            MessageRecord.provider == event.provider,
        )
        .order_by(MessageRecord.id.desc())
        .limit(1)
    )
    if record is None:
        return
    change = message_change(record.status, record.error, event, rules)
    if change is not None:
        record.status, record.error = change


def message_change(
    status: str | None, error: str | None, event: DeliveryEvent, rules: WebhookSource
) -> tuple[str, str | None] | None:
    """A message's new delivery state and error after ``event``, or ``None`` when the event
    does not advance it (the channel's rank table decides)."""
    current = K(status) if status in _KIND_VALUES else None
    if not rules.advances(current, event.kind):
        return None
    if event.kind is K.undeliverable and event.error_code:
        error = f"error {event.error_code}"[:200]
    return event.kind.value, error


def _concerns_invitation(survey: SurveyFacts, event: DeliveryEvent, channel: str) -> bool:
    """The event is about the survey's invitation (not a reminder, nor a message on a channel
    the survey has since left after a fallback)."""
    if survey.channel != channel:
        return False
    if event.provider_message_id is None or survey.provider_message_id is None:
        return True
    return event.provider_message_id == survey.provider_message_id


def _state_kind(state: SurveyState, channel: str) -> DeliveryEventKind | None:
    if state == S.sent:
        return K.sent if channel == "sms" else K.queued
    if state == S.delivered:
        return K.delivered
    if state == S.undeliverable:
        return K.undeliverable
    return None


def _raw_status(event: DeliveryEvent) -> str:
    """The provider's own name for the event (its channel wrote it), for reasons."""
    return event.status[:40] or event.kind.value


def _failure_reason(event: DeliveryEvent) -> str:
    reason = f"{event.provider} {_raw_status(event)}"
    if event.error_code:
        reason += f": error {event.error_code[:40]}"
    if not event.permanent:
        reason += " (may be transient)"
    return reason


@dataclass(slots=True)
class SurveyFacts:
    """What the delivery rules read of a survey, taken under the survey's row lock. The batch
    form (:mod:`dispatch.responses.delivery_batch`) keeps it current as its events move the
    survey, so that each event sees what the one before it left."""

    id: int
    customer_id: int
    state: SurveyState
    channel: str
    provider_message_id: str | None
    sent_at: datetime | None
    closes_at: datetime | None
    next_reminder_at: datetime | None
    final_reason: str | None

    @classmethod
    def of(cls, row: Any) -> SurveyFacts:
        """From a loaded :class:`~models.Survey` or a row holding :data:`FACT_COLUMNS`."""
        return cls(
            id=row.id,
            customer_id=row.customer_id,
            state=SurveyState(row.state),
            channel=row.channel,
            provider_message_id=row.provider_message_id,
            sent_at=row.sent_at,
            closes_at=row.closes_at,
            next_reminder_at=row.next_reminder_at,
            final_reason=row.final_reason,
        )

    def moved(self, change: DeliveryMove) -> None:
        """Take the move's state and the columns the rules read, as the database will hold
        them (``provider`` and ``delivered_at`` no rule reads)."""
        self.state = change.target
        for name, value in change.values.items():
            if name in FACT_COLUMNS:
                setattr(self, name, value)


FACT_COLUMNS: Final = tuple(f.name for f in fields(SurveyFacts))
"""The survey columns :class:`SurveyFacts` holds."""


@dataclass(frozen=True, slots=True)
class DeliveryMove:
    """Where an event takes a survey: the target, the transition's reason, the columns set."""

    target: SurveyState
    reason: str
    values: Mapping[str, Any]


def decide_delivery(
    survey: SurveyFacts,
    erased: bool,
    event: DeliveryEvent,
    rules: WebhookSource,
    config: OperatorConfig,
    now: datetime,
) -> DeliveryMove | str:
    """What a delivery event (not a consent event) does to its survey: the move, or the result
    to record when it moves nothing. ``erased``: the survey's customer is erased."""
    channel = rules.channel
    if event.kind in (K.opened, K.clicked):
        return f"engagement: {event.kind.value}"
    target = _DELIVERY_TARGET.get(event.kind)
    if target is None:
        return f"ignored: {event.kind.value}"
    if not _concerns_invitation(survey, event, channel):
        return "another message of the survey"
    state = survey.state
    values: dict[str, Any] = {}
    if state in _UNCONFIRMED:
        # The provider has the message while our own commit is missing (or was lost).
        reminder = config.survey.reminder
        sent_at = survey.sent_at or event.occurred_at or now
        values.update(
            provider=event.provider,
            sent_at=sent_at,
            closes_at=survey.closes_at or sent_at + config.survey.response_window,
        )
        # Not for an erased customer: the provider's message id would tie their survey to the
        # provider's copy of the message (their contact, the text), and no reminder goes out.
        if not erased:
            if survey.provider_message_id is None and event.provider_message_id is not None:
                values["provider_message_id"] = event.provider_message_id
            if survey.next_reminder_at is None and reminder.max > 0:
                values["next_reminder_at"] = sent_at + reminder.after
    else:
        current = _state_kind(state, channel)
        if current is None or target == state or not rules.advances(current, event.kind):
            return f"no change: survey {state.value}"
    if target == S.delivered:
        values["delivered_at"] = event.occurred_at or now
        if survey.final_reason is not None:
            values["final_reason"] = None
    elif target == S.undeliverable:
        values["final_reason"] = _failure_reason(event)
    return DeliveryMove(target, f"{event.provider} {_raw_status(event)}", values)


def apply_delivery_event(
    session: Session, event: DeliveryEvent, config: OperatorConfig, now: datetime
) -> Applied:
    """Apply one normalised provider event to its survey (see the module docstring)."""
    rules = delivery_rules(event.provider)
    if rules is None:
        return Applied(f"unknown provider {event.provider}"[:40])
    survey = _survey_for_event(session, event)
    if event.kind in CONSENT_KINDS:
        return _email_consent_event(session, survey, event, config, now)
    if survey is None:
        return Applied("no matching survey")
    customer = session.get(Customer, survey.customer_id)
    erased = customer is None or customer.erased_at is not None
    subject = subject_of(customer)
    _update_message_status(session, event, rules)
    facts = SurveyFacts.of(survey)
    decision = decide_delivery(facts, erased, event, rules, config, now)
    if isinstance(decision, str):
        return Applied(decision, facts.id, subject, erased=erased)
    moved = move(
        session,
        facts.id,
        decision.target,
        reason=decision.reason,
        only_from=[facts.state],
        now=now,
        **decision.values,
    )
    if not moved:
        return Applied(f"no change: survey {facts.state.value}", facts.id, subject, erased=erased)
    log.info(
        "survey %s: %s -> %s (%s)",
        facts.id,
        facts.state.value,
        decision.target.value,
        event.provider,
    )
    return Applied(decision.target.value, facts.id, subject, erased=erased)


def _email_consent_event(
    session: Session,
    survey: Survey | None,
    event: DeliveryEvent,
    config: OperatorConfig,
    now: datetime,
) -> Applied:
    """Unsubscribe / group unsubscribe / spam report revoke email consent (and end an open email
    invitation ``opted_out``); a group resubscribe grants it again."""
    granted = event.kind is K.opted_in
    customers: list[Customer] = []
    if survey is not None:
        customer = session.get(Customer, survey.customer_id)
        if customer is None or customer.erased_at is not None:
            return _erased_consent_event(session, survey, event, granted, now)
        customers = [customer]
    else:
        email = event.recipient
        if email is not None and email.strip():
            customers = list(
                session.scalars(
                    select(Customer).where(func.lower(Customer.email) == email.strip().lower())
                )
            )
    if not customers:
        return Applied("consent event: no customer")
    name = _raw_status(event)
    for customer in customers:
        record_consent(
            session,
            customer,
            {"email": granted},
            source=f"{event.provider}:{name}"[:120],
            text_version=None,
            captured_at=event.occurred_at or now,
            evidence_kind="webhook",
            evidence_ref=event.event_id,
            recorded_at=now,
        )
        if not granted:
            on_consent_revoked(session, customer, "email", config, now)
    survey_id = survey.id if survey is not None else None
    subject = subject_of(customers[0])
    if granted:
        return Applied("email consent granted", survey_id, subject)
    if survey is not None and survey.channel == "email":
        ended = move(
            session,
            survey.id,
            S.opted_out,
            reason=f"{event.provider} {name}",
            only_from=OPEN_STATES,
            now=now,
            final_reason=f"{event.provider} {name}",
        )
        if ended:
            return Applied("email consent revoked; opted out", survey_id, subject)
    return Applied("email consent revoked", survey_id, subject)


def _erased_consent_event(
    session: Session, survey: Survey, event: DeliveryEvent, granted: bool, now: datetime
) -> Applied:
    """About an erased customer nothing new is recorded (consent evidence names the provider's
    event); an unsubscribe still ends their open email invitation ``opted_out``, which is only
    a count."""
    if not granted and survey.channel == "email":
        name = _raw_status(event)
        move(
            session,
            survey.id,
            S.opted_out,
            reason=f"{event.provider} {name}",
            only_from=OPEN_STATES,
            now=now,
            final_reason=f"{event.provider} {name}",
        )
    return Applied("customer erased", erased=True)
