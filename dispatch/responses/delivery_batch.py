"""Delivery events applied many at a time: the replay's set-based form of
:func:`~dispatch.responses.delivery.apply_delivery_event`.

The scheduler's replay applies what the status-callback route left for later (a ``delivered``
or ``undeliverable`` report that moves a survey) and what failed once. Applied one by one, an
event costs about ten statements; here a run of events costs a fixed number, whatever its
length:

1. two reads to find each event's survey, as the one-by-one form does (the survey id the
   callback carries, else the provider's message id on the survey, else on a message record);
2. the surveys locked in id order (``SELECT ... FOR UPDATE``), then the messages whose
   delivery state the events advance, then the customers read (erased or not);
3. the events decided in order in memory by the same rules
   (:func:`~dispatch.responses.delivery.decide_delivery`,
   :func:`~dispatch.responses.delivery.message_change`), each seeing what the one before it
   left, so that two events of one survey in a run end where they would one after the other;
4. the messages' states written by one ``UPDATE``, the surveys moved by
   :func:`models.surveys.move_rows` (one ``UPDATE`` per kind of move and one ``INSERT`` of
   transitions per round).

Consent events (an unsubscribe, a spam report) are not taken here: they revoke consent and stop
other surveys, and go through the one-by-one form, in their place in the order
(:func:`dispatch.responses.store.replay_unhandled_webhooks`). Any failure here rolls the whole
run back; the caller then applies its rows one by one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, cast

from sqlalchemy import Table, or_, select
from sqlalchemy.orm import Session

from channels.base import DeliveryEvent, WebhookSource
from channels.webhook_sources import delivery_rules
from config import OperatorConfig
from dispatch.responses.common import Applied
from dispatch.responses.delivery import (
    CONSENT_KINDS,
    FACT_COLUMNS,
    SurveyFacts,
    decide_delivery,
    message_change,
)
from models import Customer, MessageRecord, Survey
from models.bulk import is_any, update_rows
from models.erasure import subject_key
from models.surveys import Move, move_rows

log = logging.getLogger(__name__)

__all__ = ["applies_together", "apply_delivery_events"]

_SURVEYS: Final = cast(Table, Survey.__table__)
_MESSAGES: Final = cast(Table, MessageRecord.__table__)
_CUSTOMERS: Final = cast(Table, Customer.__table__)


def applies_together(event: DeliveryEvent) -> bool:
    """Whether :func:`apply_delivery_events` takes the event: a delivery event (not a consent
    event) of a provider we take webhooks from."""
    return event.kind not in CONSENT_KINDS and delivery_rules(event.provider) is not None


@dataclass(slots=True)
class _Message:
    """The latest message record of a provider message id, as the run leaves it."""

    id: int
    status: str
    error: str | None
    changed: bool = False


def _find_surveys(session: Session, events: Sequence[DeliveryEvent]) -> list[int | None]:
    """Each event's survey id, found as :func:`dispatch.responses.delivery._survey_for_event`
    finds it, without locks (the caller locks what is found)."""
    named = sorted({e.survey_id for e in events if e.survey_id is not None})
    message_ids = sorted({e.provider_message_id for e in events if e.provider_message_id})
    existing: set[int] = set()
    by_survey_message: dict[str, int] = {}
    conditions = []
    if named:
        conditions.append(is_any(session, _SURVEYS.c.id, named))
    if message_ids:
        conditions.append(is_any(session, _SURVEYS.c.provider_message_id, message_ids))
    if conditions:
        for survey_id, message_id in session.execute(
            select(_SURVEYS.c.id, _SURVEYS.c.provider_message_id)
            .where(or_(*conditions))
            .order_by(_SURVEYS.c.id)
        ):
            existing.add(survey_id)
            if message_id is not None:
                by_survey_message.setdefault(message_id, survey_id)
    by_record: dict[tuple[str, str], int] = {}
    if message_ids:
        for survey_id, provider, message_id in session.execute(
            select(_MESSAGES.c.survey_id, _MESSAGES.c.provider, _MESSAGES.c.provider_message_id)
            .where(is_any(session, _MESSAGES.c.provider_message_id, message_ids))
            .order_by(_MESSAGES.c.id)
        ):
            by_record.setdefault((provider, message_id), survey_id)
    found: list[int | None] = []
    for event in events:
        if event.survey_id is not None and event.survey_id in existing:
            found.append(event.survey_id)
        elif event.provider_message_id is None:
            found.append(None)
        else:
            found.append(
                by_survey_message.get(event.provider_message_id)
                or by_record.get((event.provider, event.provider_message_id))
            )
    return found


def _lock_surveys(session: Session, ids: set[int]) -> dict[int, SurveyFacts]:
    """The surveys, locked in id order (two runs touching the same surveys take them in the same
    order, instead of each holding one the other waits for)."""
    if not ids:
        return {}
    rows = session.execute(
        select(*(_SURVEYS.c[name] for name in FACT_COLUMNS))
        .where(is_any(session, _SURVEYS.c.id, sorted(ids)))
        .order_by(_SURVEYS.c.id)
        .with_for_update()
    )
    return {row.id: SurveyFacts.of(row) for row in rows}


def _lock_messages(
    session: Session, events: Sequence[DeliveryEvent]
) -> dict[tuple[str, str], _Message]:
    """The latest message record of each (provider, provider message id) the events name,
    locked in id order after the surveys (the order the one-by-one form takes them in)."""
    message_ids = sorted({e.provider_message_id for e in events if e.provider_message_id})
    if not message_ids:
        return {}
    latest: dict[tuple[str, str], _Message] = {}
    for row in session.execute(
        select(
            _MESSAGES.c.id,
            _MESSAGES.c.provider,
            _MESSAGES.c.provider_message_id,
            _MESSAGES.c.status,
            _MESSAGES.c.error,
        )
        .where(is_any(session, _MESSAGES.c.provider_message_id, message_ids))
        .order_by(_MESSAGES.c.id)
        .with_for_update()
    ):
        # In id order: the last one read of a key is its latest, as the one-by-one form takes.
        latest[(row.provider, row.provider_message_id)] = _Message(row.id, row.status, row.error)
    return latest


def _customers(session: Session, ids: set[int]) -> dict[int, tuple[bool, str | None]]:
    """Each customer's (erased, subject key)."""
    if not ids:
        return {}
    rows = session.execute(
        select(_CUSTOMERS.c.id, _CUSTOMERS.c.external_id, _CUSTOMERS.c.erased_at).where(
            is_any(session, _CUSTOMERS.c.id, sorted(ids))
        )
    )
    return {
        row.id: (True, None) if row.erased_at is not None else (False, subject_key(row.external_id))
        for row in rows
    }


def apply_delivery_events(
    session: Session, events: Sequence[DeliveryEvent], config: OperatorConfig, now: datetime
) -> list[Applied]:
    """Apply delivery events (each one :func:`applies_together` takes) in their order, with a
    fixed number of statements; returns each event's outcome, in the same order. Raises on any
    failure, leaving the caller to roll back (a savepoint) and apply them one by one."""
    found = _find_surveys(session, events)
    surveys = _lock_surveys(session, {sid for sid in found if sid is not None})
    messages = _lock_messages(session, events)
    customers = _customers(session, {s.customer_id for s in surveys.values()})
    outcomes: list[Applied] = []
    moves: list[Move] = []
    for event, survey_id in zip(events, found, strict=True):
        rules = delivery_rules(event.provider)
        survey = surveys.get(survey_id) if survey_id is not None else None
        if rules is None:
            outcomes.append(Applied(f"unknown provider {event.provider}"[:40]))
            continue
        if survey is None:
            outcomes.append(Applied("no matching survey"))
            continue
        erased, subject = customers.get(survey.customer_id, (True, None))
        _advance_message(messages, event, rules)
        decision = decide_delivery(survey, erased, event, rules, config, now)
        if isinstance(decision, str):
            outcomes.append(Applied(decision, survey.id, subject, erased=erased))
            continue
        moves.append(
            Move(
                survey.id,
                survey.state,
                decision.target,
                decision.reason,
                tuple(decision.values.items()),
            )
        )
        survey.moved(decision)
        outcomes.append(Applied(decision.target.value, survey.id, subject, erased=erased))
    changed = [
        {"id": m.id, "status": m.status, "error": m.error} for m in messages.values() if m.changed
    ]
    update_rows(session, _MESSAGES, ["status", "error"], changed)
    move_rows(session, moves, now=now)
    log.debug("delivery events applied together: %s, %s surveys moved", len(events), len(moves))
    return outcomes


def _advance_message(
    messages: dict[tuple[str, str], _Message], event: DeliveryEvent, rules: WebhookSource
) -> None:
    if event.provider_message_id is None:
        return
    message = messages.get((event.provider, event.provider_message_id))
    if message is None:
        return
    change = message_change(message.status, message.error, event, rules)
    if change is not None:
        message.status, message.error = change
        message.changed = True
