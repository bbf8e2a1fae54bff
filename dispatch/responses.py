"""Responses: what providers and customers tell us after an invitation, applied to surveys.

Three inputs, one set of rules:

- **Delivery events** (Twilio status callbacks, the SendGrid Event Webhook), already normalised to
  :class:`~channels.base.DeliveryEvent` by the channel: the invitation's delivery state moves
  forward only (the channel's rank table decides; duplicates and late callbacks are no-ops), a
  failure report ends it ``undeliverable`` with the provider's code in ``final_reason``, a
  callback that overtakes our own commit (``sending``) or settles a ``send_unknown`` moves it to
  ``sent``/``delivered`` with the provider's message id. Unsubscribes and spam reports revoke
  email consent (and end an open invitation ``opted_out``); opens and clicks are engagement only.
- **Inbound SMS** (:func:`apply_inbound_sms`): STOP/START/HELP first, then the sender's open SMS
  survey gets the score, the follow-up comment, or one re-prompt.
- **The answer page** (:func:`record_web_score`, :func:`record_web_comment`,
  :func:`unsubscribe_email`).

Webhooks are **stored, then processed** (:func:`ingest_webhooks`): the web layer verifies the
signature, :func:`store_webhooks` keeps the raw payload once per provider id (``inbound_events``,
unique on source + external id) and commits; :func:`handle_webhook` applies one stored row in its
own transaction, holding the row's lock, and stamps ``handled_at``. A failure while applying rolls
back the effect (a savepoint), keeps the row with ``handled_at`` null and its (masked) error, and
counts the attempt: :func:`replay_unhandled_webhooks` (run it from the scheduler) applies it again
after a pause that doubles with each failure (1 minute up to 6 hours), and stops after
:data:`REPLAY_MAX_ATTEMPTS` failures, leaving the row and its error for an operator. The
provider's own retry of the same event applies it again at once. A row already handled is never
applied twice.

Once applied, a raw row keeps its payload only when it is tied to a survey (``survey_id``) or a
customer (``subject_key``, the keyed pseudonym of their id), which is where erasure looks. An
event that matched no one, or concerned an erased customer, keeps the provider's event id, type
and result only: its payload holds an address or number that no erasure could find.

No phone number or email address is logged (``channels.masking``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import DeliveryEvent, DeliveryEventKind
from channels.masking import mask_phone
from channels.sendgrid_email import webhooks as sendgrid_hooks
from channels.sendgrid_email.errors import PROVIDER as SENDGRID
from channels.twilio_sms import webhooks as twilio_hooks
from channels.twilio_sms.errors import PROVIDER as TWILIO
from channels.twilio_sms.replies import Reply, ReplyKind, interpret_reply
from channels.twilio_sms.webhooks import InboundSms
from config import BandName, OperatorConfig
from dispatch.planning import on_consent_revoked
from dispatch.scheduler import describe_error
from models import (
    Answer,
    Customer,
    InboundEvent,
    MessageRecord,
    Survey,
    SurveyState,
    current_consent,
    move,
    utcnow,
)
from models.customers import latest_consent, record_consent
from models.erasure import subject_key
from models.inbound import claim_inbound_event
from models.lifecycle import AWAITING_FOLLOWUP_STATES, OPEN_STATES

__all__ = [
    "ANSWERABLE_STATES",
    "MAX_COMMENT",
    "REPLAY_MAX_ATTEMPTS",
    "SMS_REPLY_STATES",
    "SOURCE_SENDGRID",
    "SOURCE_TWILIO_INBOUND",
    "SOURCE_TWILIO_STATUS",
    "WEBHOOK_SOURCES",
    "Applied",
    "Handled",
    "RawWebhook",
    "ReplayReport",
    "SmsReply",
    "StoredWebhook",
    "WebAnswer",
    "apply_delivery_event",
    "apply_inbound_sms",
    "can_answer",
    "given_up_webhooks",
    "handle_webhook",
    "ingest_webhooks",
    "raw_sendgrid_events",
    "raw_twilio_inbound",
    "raw_twilio_status",
    "record_web_comment",
    "record_web_score",
    "replay_pause",
    "replay_unhandled_webhooks",
    "store_webhooks",
    "unsubscribe_email",
]

log = logging.getLogger(__name__)
S = SurveyState
K = DeliveryEventKind

SOURCE_TWILIO_STATUS: Final = "twilio_status"
SOURCE_TWILIO_INBOUND: Final = "twilio_inbound"
SOURCE_SENDGRID: Final = "sendgrid"
WEBHOOK_SOURCES: Final = (SOURCE_TWILIO_STATUS, SOURCE_TWILIO_INBOUND, SOURCE_SENDGRID)

MAX_COMMENT: Final = 2000
"""Longest comment kept (characters); longer ones are cut."""

REPLAY_FIRST_PAUSE: Final = timedelta(minutes=1)
REPLAY_MAX_PAUSE: Final = timedelta(hours=6)
REPLAY_MAX_ATTEMPTS: Final = 20
"""A stored webhook whose application failed this many times is no longer replayed (about three
days of back-off); it stays unapplied with its error, counted by ``nps_webhooks_given_up``."""

_CHANNEL_OF_PROVIDER: Final[Mapping[str, str]] = {TWILIO: "sms", SENDGRID: "email"}

#: Where a delivery event takes the invitation's survey (kinds not listed never move it).
_DELIVERY_TARGET: Final[Mapping[DeliveryEventKind, SurveyState]] = {
    K.queued: S.sent,
    K.sent: S.sent,
    K.deferred: S.sent,
    K.delivered: S.delivered,
    K.undeliverable: S.undeliverable,
}

_KIND_VALUES: Final = frozenset(k.value for k in K)

#: Our own commit of the send is missing: any provider evidence moves these forward.
_UNCONFIRMED: Final = frozenset({S.sending, S.send_unknown})

SMS_REPLY_STATES: Final = frozenset({S.sent, S.delivered, *AWAITING_FOLLOWUP_STATES})
"""An SMS survey in one of these states, within its window, takes the sender's replies.
``sending`` and ``send_unknown`` do too: a reply proves the invitation went out. A ``partial``
survey does not: its window has closed, so a late reply finds no open survey."""

_SCORED: Final = frozenset({*AWAITING_FOLLOWUP_STATES, S.completed})
"""Scored within a window still open: a new score is a changed mind, a comment the follow-up."""

ANSWERABLE_STATES: Final = frozenset(
    {S.sending, S.sent, S.delivered, S.send_unknown, S.undeliverable, *_SCORED}
)
"""A score may be recorded (or changed) in these states, within the response window. A
``partial`` survey takes nothing more: the window closed before its follow-up came."""


# --------------------------------------------------------------------------------------------
# Small values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RawWebhook:
    """One provider event as stored: ``external_id`` is the provider's unique id for it."""

    source: str
    external_id: str
    event_type: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    row_id: int
    duplicate: bool  # the provider id was stored before
    pending: bool  # not applied yet (new, or an earlier attempt failed)


@dataclass(frozen=True, slots=True)
class SmsReply:
    """What to answer an inbound SMS with; the web layer turns it into words (locale, config)."""

    kind: Literal["followup", "reprompt", "thanks", "help"]
    locale: str | None
    band: BandName | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """The effect of one event: ``result`` is stored on the raw row (at most 40 characters).

    ``subject_key`` is the keyed pseudonym of the customer the event was about. ``erased``: it
    was about an erased customer, so the raw row keeps nothing tying it to them or their survey.
    """

    result: str
    survey_id: int | None = None
    subject_key: str | None = None
    reply: SmsReply | None = None
    erased: bool = False


@dataclass(frozen=True, slots=True)
class Handled:
    row_id: int
    status: Literal["applied", "duplicate", "already", "failed"]
    result: str | None = None
    reply: SmsReply | None = None


@dataclass
class ReplayReport:
    applied: int = 0
    failed: int = 0
    skipped: int = 0  # handled meanwhile, or locked by another replayer


@dataclass(frozen=True, slots=True)
class WebAnswer:
    """The outcome of an answer-page post."""

    status: Literal["recorded", "unchanged", "closed", "no_score"]
    score: int | None = None


# --------------------------------------------------------------------------------------------
# Raw rows: building, storing, handling, replaying
# --------------------------------------------------------------------------------------------


def _external_id(value: str) -> str:
    return value if len(value) <= 200 else "sha256:" + hashlib.sha256(value.encode()).hexdigest()


def raw_twilio_status(form: Mapping[str, str], query_string: str) -> RawWebhook:
    """A verified status callback as a raw row (raises ``WebhookPayloadError`` if malformed)."""
    event = twilio_hooks.parse_status_callback(
        form, twilio_hooks.survey_id_from_query(query_string)
    )
    return RawWebhook(
        SOURCE_TWILIO_STATUS,
        _external_id(event.event_id),
        event.kind.value,
        {"form": dict(form), "query": query_string},
    )


def raw_twilio_inbound(form: Mapping[str, str]) -> RawWebhook:
    """A verified inbound SMS as a raw row (raises ``WebhookPayloadError`` if malformed)."""
    sms = twilio_hooks.parse_inbound(form)
    return RawWebhook(
        SOURCE_TWILIO_INBOUND, _external_id(sms.message_sid), "inbound_sms", {"form": dict(form)}
    )


def raw_sendgrid_events(body: bytes) -> list[RawWebhook]:
    """A verified Event Webhook body as raw rows, one per event, in body order."""
    rows = []
    for event in sendgrid_hooks.parse_events(body):
        name = event.raw.get("event")
        rows.append(
            RawWebhook(
                SOURCE_SENDGRID,
                _external_id(event.event_id),
                (name if isinstance(name, str) and name else event.kind.value)[:40],
                dict(event.raw),
            )
        )
    return rows


def store_webhooks(
    factory: sessionmaker[Session], raws: Sequence[RawWebhook]
) -> list[StoredWebhook]:
    """Keep each raw event once (one transaction, committed before anything is applied)."""
    stored: list[StoredWebhook] = []
    seen: set[int] = set()
    with factory() as session, session.begin():
        for raw in raws:
            row_id = claim_inbound_event(
                session,
                source=raw.source,
                external_id=raw.external_id,
                event_type=raw.event_type[:40],
                payload=raw.payload,
            )
            if row_id is not None:
                stored.append(StoredWebhook(row_id, duplicate=False, pending=True))
                seen.add(row_id)
                continue
            existing = session.execute(
                select(InboundEvent.id, InboundEvent.handled_at).where(
                    InboundEvent.source == raw.source,
                    InboundEvent.external_id == raw.external_id,
                )
            ).one()
            pending = existing.handled_at is None and existing.id not in seen
            stored.append(StoredWebhook(existing.id, duplicate=True, pending=pending))
            seen.add(existing.id)
    return stored


def replay_pause(attempts: int) -> timedelta:
    """The pause after the ``attempts``-th failed application of a stored webhook: one minute,
    doubling with each failure, at most :data:`REPLAY_MAX_PAUSE`."""
    doublings = min(max(attempts - 1, 0), 16)  # 2**16 minutes is well past the cap already
    pause: timedelta = REPLAY_FIRST_PAUSE * (2**doublings)
    return min(pause, REPLAY_MAX_PAUSE)


def handle_webhook(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    row_id: int,
    *,
    now: datetime | None = None,
    live: bool = True,
    skip_locked: bool = False,
) -> Handled:
    """Apply one stored row, once. ``live``: the HTTP request is still open, so an SMS reply
    goes out as TwiML (a replay records the reply it could not send).

    The row is locked for the whole attempt and its effect is applied inside a savepoint: a
    failure rolls back every write of the effect, and the row records the failure (``attempts``,
    ``retry_at``, the masked ``error``) in the same transaction, still locked, so a concurrent
    replayer never sees a half-recorded attempt."""
    now = now or utcnow()
    failure: str | None = None
    attempts = 0
    try:
        with factory() as session, session.begin():
            row = session.scalar(
                select(InboundEvent)
                .where(InboundEvent.id == row_id, InboundEvent.handled_at.is_(None))
                .with_for_update(skip_locked=skip_locked)
            )
            if row is None:
                return Handled(row_id, "already")
            attempts = (row.attempts or 0) + 1
            try:
                with session.begin_nested():
                    applied = _apply_row(session, row, config, now, live=live)
                    session.execute(
                        update(InboundEvent)
                        .where(InboundEvent.id == row_id)
                        .values(
                            handled_at=now,
                            result=applied.result[:40],
                            error=None,
                            retry_at=None,
                            **_ties(applied),
                        )
                    )
            except Exception as exc:  # the savepoint is rolled back: nothing of the effect stays
                failure = describe_error(exc, limit=2000)
                retry_at = now + replay_pause(attempts)
                session.execute(
                    update(InboundEvent)
                    .where(InboundEvent.id == row_id)
                    .values(attempts=attempts, retry_at=retry_at, error=failure)
                )
    except Exception as exc:  # the transaction itself failed: nothing could be recorded
        log.warning(
            "webhook row %s not applied, failure not recorded: %s",
            row_id,
            describe_error(exc),
        )
        return Handled(row_id, "failed")
    if failure is not None:
        _log_failed_attempt(row_id, attempts, failure)
        return Handled(row_id, "failed")
    return Handled(row_id, "applied", applied.result, applied.reply)


def _ties(applied: Applied) -> dict[str, object]:
    """What an applied raw row keeps: its payload only while it is tied to a survey or a
    customer, which is where erasure looks for it. An event that matched no one (an SMS from an
    unknown number, a SendGrid event for no survey) or that was about an erased customer keeps
    the provider's event id, type and result, and no payload."""
    if applied.erased:
        return {"payload": None}
    if applied.survey_id is None and applied.subject_key is None:
        return {"payload": None}
    ties: dict[str, object] = {}
    if applied.survey_id is not None:
        ties["survey_id"] = applied.survey_id
    if applied.subject_key is not None:
        ties["subject_key"] = applied.subject_key
    return ties


def _subject_of(customer: Customer | None) -> str | None:
    """The keyed pseudonym stored for a customer on raw rows (``None`` once erased)."""
    if customer is None or customer.erased_at is not None:
        return None
    return subject_key(customer.external_id)


def _log_failed_attempt(row_id: int, attempts: int, failure: str) -> None:
    if attempts >= REPLAY_MAX_ATTEMPTS:
        log.error(
            "ALERT webhook row %s: given up after %s failed attempts (kept, not replayed): %s",
            row_id,
            attempts,
            failure[:300],
        )
    else:
        log.warning(
            "webhook row %s not applied (attempt %s; replayed in %s): %s",
            row_id,
            attempts,
            replay_pause(attempts),
            failure[:300],
        )


def ingest_webhooks(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    raws: Sequence[RawWebhook],
    *,
    now: datetime | None = None,
) -> list[Handled]:
    """Store, then process: what every webhook route calls after verifying the signature."""
    results: list[Handled] = []
    for item in store_webhooks(factory, raws):
        if not item.pending:
            results.append(Handled(item.row_id, "duplicate"))
        else:
            results.append(handle_webhook(factory, config, item.row_id, now=now))
    return results


def replay_unhandled_webhooks(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    *,
    now: datetime | None = None,
    older_than: timedelta = timedelta(minutes=1),
    limit: int = 500,
) -> ReplayReport:
    """Apply stored provider webhooks that are not applied yet (``handled_at`` null), in arrival
    order: those whose application failed once their back-off has passed (``retry_at``), and
    those never attempted (a process died between storing and applying). Rows younger than
    ``older_than`` are left to the request that stored them; rows that failed
    :data:`REPLAY_MAX_ATTEMPTS` times are left alone, with their error, for an operator.
    Safe to run from several schedulers at once (rows are taken with ``SKIP LOCKED``)."""
    now = now or utcnow()
    report = ReplayReport()
    with factory() as session:
        ids = list(
            session.scalars(
                select(InboundEvent.id)
                .where(
                    InboundEvent.source.in_(WEBHOOK_SOURCES),
                    InboundEvent.handled_at.is_(None),
                    InboundEvent.received_at <= now - older_than,
                    InboundEvent.attempts < REPLAY_MAX_ATTEMPTS,
                    or_(InboundEvent.retry_at.is_(None), InboundEvent.retry_at <= now),
                )
                .order_by(InboundEvent.id)
                .limit(limit)
            )
        )
    for row_id in ids:
        handled = handle_webhook(factory, config, row_id, now=now, live=False, skip_locked=True)
        if handled.status == "applied":
            report.applied += 1
        elif handled.status == "failed":
            report.failed += 1
        else:
            report.skipped += 1
    if report.applied or report.failed:
        log.info(
            "webhook replay: %s applied, %s failed, %s skipped",
            report.applied,
            report.failed,
            report.skipped,
        )
    return report


def given_up_webhooks(session: Session) -> int:
    """Stored webhooks no longer replayed: :data:`REPLAY_MAX_ATTEMPTS` applications failed."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(InboundEvent)
            .where(
                InboundEvent.source.in_(WEBHOOK_SOURCES),
                InboundEvent.handled_at.is_(None),
                InboundEvent.attempts >= REPLAY_MAX_ATTEMPTS,
            )
        )
        or 0
    )


def _form(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def _apply_row(
    session: Session, row: InboundEvent, config: OperatorConfig, now: datetime, *, live: bool
) -> Applied:
    payload = row.payload
    if not isinstance(payload, dict):
        return Applied("payload erased")
    if row.source == SOURCE_TWILIO_STATUS:
        query = str(payload.get("query") or "")
        event = twilio_hooks.parse_status_callback(
            _form(payload.get("form")),
            twilio_hooks.survey_id_from_query(query),
            received_at=row.received_at,
        )
        return apply_delivery_event(session, event, config, now)
    if row.source == SOURCE_TWILIO_INBOUND:
        sms = twilio_hooks.parse_inbound(_form(payload.get("form")))
        return apply_inbound_sms(session, sms, config, now, live=live)
    if row.source == SOURCE_SENDGRID:
        [event] = sendgrid_hooks.parse_events(json.dumps([payload]).encode())
        return apply_delivery_event(session, event, config, now)
    return Applied(f"unknown source {row.source}")


# --------------------------------------------------------------------------------------------
# Shared survey helpers
# --------------------------------------------------------------------------------------------


def _lock_survey(session: Session, survey_id: int) -> Survey | None:
    return session.scalar(select(Survey).where(Survey.id == survey_id).with_for_update())


def _window_end(survey: Survey, config: OperatorConfig) -> datetime:
    if survey.closes_at is not None:
        return survey.closes_at
    started = survey.sent_at or survey.sending_at or survey.state_changed_at
    return started + config.survey.response_window


def can_answer(survey: Survey, now: datetime) -> bool:
    """Whether a score may still be recorded for ``survey`` (state and window)."""
    if SurveyState(survey.state) not in ANSWERABLE_STATES:
        return False
    return survey.closes_at is None or survey.closes_at > now


def _clean_text(text: str) -> str | None:
    """Customer text as stored: no control characters but line breaks and tabs (PostgreSQL
    refuses NUL), trimmed, at most :data:`MAX_COMMENT` characters; ``None`` when empty."""
    kept = "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs")
    ).strip()
    return kept[:MAX_COMMENT] or None


def _erased(session: Session, survey: Survey) -> bool:
    """Whether the survey's customer is erased. A share lock on the customer row orders this
    against an erasure (which holds it for update): either the erasure commits first and this
    sees it, or this answer commits first and the erasure then empties it."""
    erased_at = session.scalar(
        select(Customer.erased_at)
        .where(Customer.id == survey.customer_id)
        .with_for_update(read=True)
    )
    return erased_at is not None


def _set_score(
    session: Session,
    survey: Survey,
    score: int,
    via: str,
    config: OperatorConfig,
    now: datetime,
    comment: str | None = None,
) -> Literal["recorded", "unchanged", "closed"]:
    """Record a score (and a comment given with it), keeping the history in ``answers``."""
    if comment is not None and _erased(session, survey):
        comment = None  # free text about an erased customer is not kept; the score counts
    state = SurveyState(survey.state)
    if state in _SCORED and survey.score == score and comment is None:
        return "unchanged"
    values: dict[str, object] = {"score": score}
    if survey.answered_at is None:
        values["answered_at"] = now
    if survey.closes_at is None:
        values["closes_at"] = _window_end(survey, config)
    if survey.final_reason is not None:
        values["final_reason"] = None  # an answer after a failure report: it arrived after all
    target = S.completed if state == S.completed else S.answered
    if comment is not None and target == S.completed:
        values["comment"] = comment
    if not move(
        session, survey.id, target, reason=f"score via {via}", only_from=[state], now=now, **values
    ):
        return "closed"
    if comment is not None and target == S.answered:
        move(
            session,
            survey.id,
            S.completed,
            reason=f"comment via {via}",
            only_from=[S.answered],
            now=now,
            comment=comment,
        )
    session.add(Answer(survey_id=survey.id, score=score, comment=comment, via=via, received_at=now))
    return "recorded"


def _set_comment(session: Session, survey: Survey, comment: str, via: str, now: datetime) -> bool:
    """The follow-up answer: ``answered -> completed`` (or a new comment on a completed one)."""
    state = SurveyState(survey.state)
    if state not in _SCORED:
        return False
    if _erased(session, survey):
        return True  # taken, not kept: free text about an erased customer
    if not move(
        session,
        survey.id,
        S.completed,
        reason=f"comment via {via}",
        only_from=[state],
        now=now,
        comment=comment,
    ):
        return False
    session.add(Answer(survey_id=survey.id, score=None, comment=comment, via=via, received_at=now))
    return True


# --------------------------------------------------------------------------------------------
# Delivery events (Twilio status callbacks, SendGrid events)
# --------------------------------------------------------------------------------------------


def _survey_for_event(session: Session, event: DeliveryEvent) -> Survey | None:
    if event.survey_id is not None:
        survey = _lock_survey(session, event.survey_id)
        if survey is not None:
            return survey
    if event.provider_message_id is None:
        return None
    survey_id = session.scalar(
        select(Survey.id).where(Survey.provider_message_id == event.provider_message_id).limit(1)
    ) or session.scalar(
        select(MessageRecord.survey_id)
        .where(
            MessageRecord.provider_message_id == event.provider_message_id,
            MessageRecord.provider == event.provider,
        )
        .limit(1)
    )
    return _lock_survey(session, survey_id) if survey_id is not None else None


def _advances(channel: str, current: DeliveryEventKind | None, new: DeliveryEventKind) -> bool:
    if channel == "sms":
        return twilio_hooks.advances(current, new)
    return sendgrid_hooks.advances(current, new)


def _update_message_status(session: Session, event: DeliveryEvent, channel: str) -> None:
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
    current = K(record.status) if record.status in _KIND_VALUES else None
    if _advances(channel, current, event.kind):
        record.status = event.kind.value
        if event.kind is K.undeliverable and event.error_code:
            record.error = f"error {event.error_code}"[:200]


def _concerns_invitation(survey: Survey, event: DeliveryEvent, channel: str) -> bool:
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
    if event.provider == TWILIO:
        value = event.raw.get("MessageStatus") or event.raw.get("SmsStatus")
    else:
        value = event.raw.get("event")
        kind = event.raw.get("type")
        if value == "bounce" and isinstance(kind, str) and kind in ("bounce", "blocked"):
            value = f"bounce ({kind})"
    return str(value)[:40] if value else event.kind.value


def _failure_reason(event: DeliveryEvent) -> str:
    reason = f"{event.provider} {_raw_status(event)}"
    if event.error_code:
        reason += f": error {event.error_code[:40]}"
    if not event.permanent:
        reason += " (may be transient)"
    return reason


def apply_delivery_event(
    session: Session, event: DeliveryEvent, config: OperatorConfig, now: datetime
) -> Applied:
    """Apply one normalised provider event to its survey (see the module docstring)."""
    channel = _CHANNEL_OF_PROVIDER.get(event.provider)
    if channel is None:
        return Applied(f"unknown provider {event.provider}"[:40])
    survey = _survey_for_event(session, event)
    if event.kind in (K.opted_out, K.spam_report, K.opted_in):
        return _email_consent_event(session, survey, event, config, now)
    if survey is None:
        return Applied("no matching survey")
    customer = session.get(Customer, survey.customer_id)
    erased = customer is None or customer.erased_at is not None
    subject = _subject_of(customer)
    survey_id = survey.id

    def applied(result: str) -> Applied:
        return Applied(result, survey_id, subject, erased=erased)

    _update_message_status(session, event, channel)
    if event.kind in (K.opened, K.clicked):
        return applied(f"engagement: {event.kind.value}")
    target = _DELIVERY_TARGET.get(event.kind)
    if target is None:
        return applied(f"ignored: {event.kind.value}")
    if not _concerns_invitation(survey, event, channel):
        return applied("another message of the survey")
    state = SurveyState(survey.state)
    values: dict[str, object] = {}
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
        if current is None or target == state or not _advances(channel, current, event.kind):
            return applied(f"no change: survey {state.value}")
    if target == S.delivered:
        values["delivered_at"] = event.occurred_at or now
        if survey.final_reason is not None:
            values["final_reason"] = None
    elif target == S.undeliverable:
        values["final_reason"] = _failure_reason(event)
    moved = move(
        session,
        survey.id,
        target,
        reason=f"{event.provider} {_raw_status(event)}",
        only_from=[state],
        now=now,
        **values,
    )
    if not moved:
        return applied(f"no change: survey {state.value}")
    log.info("survey %s: %s -> %s (%s)", survey.id, state.value, target.value, event.provider)
    return applied(target.value)


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
        email = event.raw.get("email")
        if isinstance(email, str) and email.strip():
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
    subject = _subject_of(customers[0])
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


# --------------------------------------------------------------------------------------------
# Inbound SMS
# --------------------------------------------------------------------------------------------


def _open_sms_survey(
    session: Session, customers: Sequence[Customer], config: OperatorConfig, now: datetime
) -> Survey | None:
    """The most recent SMS survey of these customers that takes replies now."""
    if not customers:
        return None
    states = [s.value for s in SMS_REPLY_STATES | _UNCONFIRMED]
    rows = session.scalars(
        select(Survey)
        .where(
            Survey.customer_id.in_([c.id for c in customers]),
            Survey.channel == "sms",
            Survey.state.in_(states),
        )
        .order_by(Survey.id)  # one lock order for every transaction: no deadlock
        .with_for_update()
    ).all()
    candidates = [s for s in rows if _window_end(s, config) > now]
    return max(
        candidates,
        key=lambda s: (s.sent_at or s.sending_at or s.state_changed_at, s.id),
        default=None,
    )


def _record_reply(session: Session, survey_id: int, kind: str, live: bool) -> None:
    """The SMS we answer with (as TwiML): kept like every message, and counted for re-prompts."""
    session.add(
        MessageRecord(
            survey_id=survey_id,
            kind=kind,
            channel="sms",
            provider=TWILIO,
            status="twiml" if live else "not_sent",
        )
    )


def apply_inbound_sms(
    session: Session, sms: InboundSms, config: OperatorConfig, now: datetime, *, live: bool = True
) -> Applied:
    """A customer's SMS: STOP / START / HELP, else an answer to their open SMS survey."""
    reply = interpret_reply(sms.body, sms.opt_out_type)
    customers = list(
        session.scalars(
            select(Customer).where(Customer.phone == sms.from_number).order_by(Customer.id)
        )
    )
    subject = _subject_of(customers[0]) if customers else None
    if reply.kind is ReplyKind.opt_out:
        applied = _sms_opt_out(session, sms, customers, config, now)
    elif reply.kind is ReplyKind.opt_in:
        applied = _sms_opt_in(session, sms, customers, now)
    else:
        survey = _open_sms_survey(session, customers, config, now)
        owner = next((c for c in customers if survey and c.id == survey.customer_id), None)
        speaker = owner or (customers[0] if customers else None)
        locale = speaker.locale if speaker is not None else None
        subject = _subject_of(speaker)
        if reply.kind is ReplyKind.help:
            applied = Applied(
                "help", survey.id if survey else None, subject, SmsReply("help", locale)
            )
        elif survey is None:
            applied = Applied("no open survey", None, subject)
        else:
            answer = _sms_answer(session, survey, sms.body, reply, config, now, live, locale)
            applied = Applied(answer.result, answer.survey_id, subject, answer.reply)
    log.info("inbound SMS from %s: %s", mask_phone(sms.from_number), applied.result)
    return applied


def _sms_opt_out(
    session: Session,
    sms: InboundSms,
    customers: Sequence[Customer],
    config: OperatorConfig,
    now: datetime,
) -> Applied:
    ended: list[int] = []
    for customer in customers:
        record_consent(
            session,
            customer,
            {"sms": False},
            source=f"{TWILIO}:sms-reply",
            text_version=None,
            captured_at=now,
            evidence_kind="sms_reply",
            evidence_ref=sms.message_sid,
            recorded_at=now,
        )
        open_ids = list(
            session.scalars(
                select(Survey.id).where(
                    Survey.customer_id == customer.id,
                    Survey.channel == "sms",
                    Survey.state.in_([s.value for s in OPEN_STATES]),
                )
            )
        )
        ended += move(
            session,
            open_ids,
            S.opted_out,
            reason="STOP reply",
            only_from=OPEN_STATES,
            now=now,
            final_reason="sms opt-out (STOP reply)",
        )
        ended += _opt_out_in_flight(session, customer, now)
        on_consent_revoked(session, customer, "sms", config, now)
    if not customers:
        return Applied("opt-out: unknown number")
    return Applied("opted out", ended[0] if ended else None, _subject_of(customers[0]))


def _opt_out_in_flight(session: Session, customer: Customer, now: datetime) -> list[int]:
    """SMS invitations whose provider call was made but whose outcome is not recorded yet
    (``sending`` with its marker ``sending_at``, or ``send_unknown``) end ``opted_out``: the
    STOP answers that message. When the sender's answer comes later it finds the row no longer
    ``sending`` and moves nothing (no ``sent``, no reminder).

    A row in ``sending`` without the marker has not reached the provider: it is left to the
    sender, which re-checks consent after its rate-limit wait and, finding it revoked, falls
    back to another consented channel or ends it ``suppressed`` (consent revoked before
    sending), not ``opted_out`` (no invitation went out) nor ``withdrawn`` (which is for a
    cancelled order or an erased customer). The rows are locked before the marker is read, and
    the sender locks the row before its re-check, so one of the two sees the other's commit."""
    rows = session.execute(
        select(Survey.id, Survey.state, Survey.sending_at)
        .where(
            Survey.customer_id == customer.id,
            Survey.channel == "sms",
            Survey.state.in_([S.sending.value, S.send_unknown.value]),
        )
        .order_by(Survey.id)
        .with_for_update()
    ).all()
    ids = [r.id for r in rows if r.state == S.send_unknown or r.sending_at is not None]
    return move(
        session,
        ids,
        S.opted_out,
        reason="STOP reply while the invitation was being sent",
        only_from=[S.sending, S.send_unknown],
        now=now,
        final_reason="sms opt-out (STOP reply)",
    )


def _sms_opt_in(
    session: Session, sms: InboundSms, customers: Sequence[Customer], now: datetime
) -> Applied:
    """START re-grants SMS consent, but only where STOP (or another revocation) took it away:
    a "YES" from someone who never consented to SMS is not consent."""
    regranted = 0
    for customer in customers:
        if latest_consent(session, customer.id, "sms") is False:
            record_consent(
                session,
                customer,
                {"sms": True},
                source=f"{TWILIO}:sms-reply",
                text_version=None,
                captured_at=now,
                evidence_kind="sms_reply",
                evidence_ref=sms.message_sid,
                recorded_at=now,
            )
            regranted += 1
    subject = _subject_of(customers[0]) if customers else None
    return Applied("opted in" if regranted else "opt-in: nothing to re-grant", None, subject)


def _sms_answer(
    session: Session,
    survey: Survey,
    body: str,
    reply: Reply,
    config: OperatorConfig,
    now: datetime,
    live: bool,
    locale: str | None,
) -> Applied:
    bands = config.survey.bands
    state = SurveyState(survey.state)
    if state in _SCORED:
        # Waiting for the follow-up. A bare number is a changed mind; anything else answers the
        # follow-up question (a score-looking "2 items were missing" is a comment here).
        if reply.kind is ReplyKind.score and reply.comment is None and reply.score is not None:
            outcome = _set_score(session, survey, reply.score, "sms", config, now)
            _record_reply(session, survey.id, "followup", live)
            result = "changed score" if outcome == "recorded" else "same score"
            band = bands.band_of(reply.score)
            return Applied(result, survey.id, reply=SmsReply("followup", locale, band))
        comment = _clean_text(body)
        if comment is None or not any(ch.isalnum() for ch in comment):
            return Applied("empty reply ignored", survey.id)
        _set_comment(session, survey, comment, "sms", now)
        _record_reply(session, survey.id, "thanks", live)
        return Applied("comment", survey.id, reply=SmsReply("thanks", locale))
    if reply.kind is ReplyKind.score and reply.score is not None:
        comment = _clean_text(reply.comment) if reply.comment else None
        outcome = _set_score(session, survey, reply.score, "sms", config, now, comment=comment)
        if outcome == "closed":
            return Applied("survey closed", survey.id)
        if comment is not None:
            _record_reply(session, survey.id, "thanks", live)
            return Applied("score and comment", survey.id, reply=SmsReply("thanks", locale))
        _record_reply(session, survey.id, "followup", live)
        band = bands.band_of(reply.score)
        return Applied("score", survey.id, reply=SmsReply("followup", locale, band))
    # No score could be read: one polite re-prompt, then keep what they write as a comment.
    prompts = session.scalar(
        select(func.count())
        .select_from(MessageRecord)
        .where(MessageRecord.survey_id == survey.id, MessageRecord.kind == "reprompt")
    )
    if not prompts:
        _record_reply(session, survey.id, "reprompt", live)
        return Applied("re-prompted", survey.id, reply=SmsReply("reprompt", locale))
    comment = _clean_text(reply.comment) if reply.comment else None
    if comment is None:
        return Applied("unreadable, empty: ignored", survey.id)
    if _erased(session, survey):
        return Applied("customer erased: not kept", survey.id)
    session.add(
        Answer(survey_id=survey.id, score=None, comment=comment, via="sms", received_at=now)
    )
    session.execute(update(Survey).where(Survey.id == survey.id).values(comment=comment))
    return Applied("unreadable: stored as comment", survey.id)


# --------------------------------------------------------------------------------------------
# The answer page
# --------------------------------------------------------------------------------------------


def record_web_score(
    session: Session, survey_id: int, score: int, config: OperatorConfig, now: datetime
) -> WebAnswer:
    """A score posted from the answer page; a changed mind updates it and keeps the history."""
    if not 0 <= score <= 10:
        raise ValueError(f"score must be 0..10, not {score}")
    survey = _lock_survey(session, survey_id)
    if survey is None or not can_answer(survey, now):
        return WebAnswer("closed")
    outcome = _set_score(session, survey, score, "web", config, now)
    if outcome == "closed":
        return WebAnswer("closed")
    log.info("survey %s: score via web (%s)", survey_id, outcome)
    return WebAnswer(outcome, score)


def record_web_comment(session: Session, survey_id: int, comment: str, now: datetime) -> WebAnswer:
    """The follow-up answer from the answer page. A blank comment changes nothing."""
    survey = _lock_survey(session, survey_id)
    if survey is None or not can_answer(survey, now):
        return WebAnswer("closed")
    if survey.score is None:
        return WebAnswer("no_score")
    text = _clean_text(comment)
    if text is None or text == survey.comment:
        return WebAnswer("unchanged", survey.score)
    if not _set_comment(session, survey, text, "web", now):
        return WebAnswer("closed")
    return WebAnswer("recorded", survey.score)


def unsubscribe_email(
    session: Session, survey_id: int, config: OperatorConfig, now: datetime
) -> str:
    """The unsubscribe link (and RFC 8058 one-click POST): revoke email consent, stop unsent
    email surveys, end this open email invitation ``opted_out``. Idempotent."""
    survey = _lock_survey(session, survey_id)
    if survey is None:
        return "no survey"
    customer = session.get(Customer, survey.customer_id)
    if customer is None:
        return "no customer"
    outcome = "already unsubscribed"
    if latest_consent(session, customer.id, "email") is not False:
        record_consent(
            session,
            customer,
            {"email": False},
            source="answer-page:unsubscribe",
            text_version=None,
            captured_at=now,
            evidence_kind="unsubscribe_link",
            evidence_ref=f"survey:{survey.id}",
            recorded_at=now,
        )
        outcome = "unsubscribed"
    if not current_consent(session, customer.id, "email"):
        on_consent_revoked(session, customer, "email", config, now)
    if survey.channel == "email":
        move(
            session,
            survey.id,
            S.opted_out,
            reason="unsubscribe link",
            only_from=OPEN_STATES,
            now=now,
            final_reason="email unsubscribe (link)",
        )
    log.info("survey %s: email %s", survey_id, outcome)
    return outcome
