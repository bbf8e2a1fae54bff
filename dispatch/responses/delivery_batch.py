"""Delivery events applied many at a time: the replay's set-based form of
:func:`~dispatch.responses.delivery.apply_delivery_event`.

The scheduler's replay applies what the status-callback route left for later (a ``delivered``
or ``undeliverable`` report that moves a survey) and what failed once. Applied one by one, an
event costs about ten statements; here a run of events costs a fixed number, whatever its
length:

1. two reads to find each event's survey, as the one-by-one form does (the survey id the
   callback carries, else the provider's message id on the survey, else on a message record),
   kept current as the run goes: a send whose commit was lost takes its message id from the
   first report of it, and a later report naming only that id finds it;
2. the surveys locked in id order, then the message records the events name, then the
   customers read (erased or not);
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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Table, or_, select
from sqlalchemy.orm import Session

from channels.base import DeliveryEvent, WebhookSource
from channels.webhook_sources import delivery_rules
from config import OperatorConfig
from dispatch.responses.common import CONSENT_KINDS, Applied
from dispatch.responses.delivery import (
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


@dataclass(slots=True)
class _Finder:
    """Finds each event's survey as :func:`dispatch.responses.delivery._survey_for_event` would
    when the events are applied one after the other: the survey the callback names, else the
    lowest survey holding the provider's message id (as read, and as earlier events of the run
    set it: a send whose commit was lost takes its message id from the first report of it),
    else the survey of the lowest message record with that id."""

    by_survey_message: dict[str, int]
    by_record: dict[tuple[str, str], int]
    read_ids: set[int]

    @classmethod
    def read(cls, session: Session, events: Sequence[DeliveryEvent]) -> _Finder:
        """Two reads, without locks (the caller locks :meth:`candidates`)."""
        named = sorted({e.survey_id for e in events if e.survey_id is not None})
        message_ids = sorted({e.provider_message_id for e in events if e.provider_message_id})
        finder = cls({}, {}, set())
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
                finder.read_ids.add(survey_id)
                if message_id is not None:
                    finder.by_survey_message.setdefault(message_id, survey_id)
        if message_ids:
            for survey_id, provider, message_id in session.execute(
                select(_MESSAGES.c.survey_id, _MESSAGES.c.provider, _MESSAGES.c.provider_message_id)
                .where(is_any(session, _MESSAGES.c.provider_message_id, message_ids))
                .order_by(_MESSAGES.c.id)
            ):
                finder.by_record.setdefault((provider, message_id), survey_id)
        return finder

    def candidates(self, events: Sequence[DeliveryEvent]) -> set[int]:
        """Every survey an event of the run may turn out to be about."""
        ids: set[int] = set()
        for event in events:
            if event.survey_id is not None and event.survey_id in self.read_ids:
                ids.add(event.survey_id)
            elif event.provider_message_id is not None:
                for found in (
                    self.by_survey_message.get(event.provider_message_id),
                    self.by_record.get((event.provider, event.provider_message_id)),
                ):
                    if found is not None:
                        ids.add(found)
        return ids

    def find(self, event: DeliveryEvent, surveys: dict[int, SurveyFacts]) -> SurveyFacts | None:
        """The event's survey among the locked ones, as the run has left them so far."""
        if event.survey_id is not None and event.survey_id in surveys:
            return surveys[event.survey_id]
        message_id = event.provider_message_id
        if message_id is None:
            return None
        found = self.by_survey_message.get(message_id) or self.by_record.get(
            (event.provider, message_id)
        )
        return surveys.get(found) if found is not None else None

    def took(self, survey: SurveyFacts) -> None:
        """``survey`` holds its provider message id from now on."""
        message_id = survey.provider_message_id
        if message_id is None:
            return
        holder = self.by_survey_message.get(message_id)
        if holder is None or survey.id < holder:
            self.by_survey_message[message_id] = survey.id


def _lock_surveys(session: Session, ids: set[int]) -> dict[int, SurveyFacts]:
    """The surveys, locked in id order (two runs touching the same surveys take them in the same
    order, instead of each holding one the other waits for). ``FOR NO KEY UPDATE`` on
    PostgreSQL, the lock an ``UPDATE`` of non-key columns takes anyway: it still keeps every other
    writer out, but not the foreign-key check of a webhook request storing a raw row tied to
    the survey, which would otherwise wait for the run while holding the message row the run
    wants next (a deadlock)."""
    if not ids:
        return {}
    rows = session.execute(
        select(*(_SURVEYS.c[name] for name in FACT_COLUMNS))
        .where(is_any(session, _SURVEYS.c.id, sorted(ids)))
        .order_by(_SURVEYS.c.id)
        .with_for_update(key_share=True)
    )
    return {row.id: SurveyFacts.of(row) for row in rows}


def _lock_messages(
    session: Session, events: Sequence[DeliveryEvent]
) -> dict[tuple[str, str], _Message]:
    """The latest message record of each (provider, provider message id) the events name. Every
    record with one of those ids is locked after the surveys (the one-by-one form, too, writes
    a message only once it holds the survey), so that a webhook request advancing one of them
    meanwhile waits, then re-checks its rank against what the run wrote. They are locked in
    the order a group of status callbacks advances its messages, (provider, message id), so
    that a run and such a group holding one message each do not wait for each other's."""
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
        .order_by(
            *_in_code_point_order(session, _MESSAGES.c.provider, _MESSAGES.c.provider_message_id),
            _MESSAGES.c.id,
        )
        .with_for_update(key_share=True)
    ):
        # In id order within a key: the last one read is its latest, as the one-by-one form
        # takes.
        latest[(row.provider, row.provider_message_id)] = _Message(row.id, row.status, row.error)
    return latest


def _in_code_point_order(session: Session, *columns: Any) -> list[Any]:
    """``columns`` ordered as Python sorts their strings (PostgreSQL's ``"C"`` collation; the
    database's own may order case and punctuation otherwise)."""
    if session.get_bind().dialect.name != "postgresql":
        return list(columns)
    return [column.collate("C") for column in columns]


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
    finder = _Finder.read(session, events)
    surveys = _lock_surveys(session, finder.candidates(events))
    messages = _lock_messages(session, events)
    customers = _customers(session, {s.customer_id for s in surveys.values()})
    outcomes: list[Applied] = []
    moves: list[Move] = []
    for event in events:
        rules = delivery_rules(event.provider)
        if rules is None:  # applies_together takes no such event
            raise ValueError(f"no delivery rules for provider {event.provider!r}")
        survey = finder.find(event, surveys)
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
        finder.took(survey)
        outcomes.append(Applied(decision.target.value, survey.id, subject, erased=erased))
    changed = [
        {"id": m.id, "status": m.status, "error": m.error} for m in messages.values() if m.changed
    ]
    update_rows(session, _MESSAGES, ["status", "error"], changed)
    move_rows(session, moves, now=now)
    if moves:
        by_target = Counter(move.target.value for move in moves)
        log.info(
            "delivery events applied as a run: %s, surveys moved %s",
            len(events),
            ", ".join(f"{count} to {target}" for target, count in sorted(by_target.items())),
        )
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
