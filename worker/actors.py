"""The dramatiq actors. Shops enqueue `ingest_event` (one event) or `ingest_events` (a list of
events, applied as one batch) on the queue `events`: keep those names."""

from __future__ import annotations

import logging
from typing import Any

import dramatiq
from dramatiq import Retry

import worker.alerting  # noqa: F401 - declares deliver_detractor_alert (queue "alerts") here
from wiring.runtime import get_runtime
from worker.broker import EVENTS_QUEUE, SENDS_QUEUE, actor
from worker.slots import Slots

log = logging.getLogger(__name__)

# A failure while applying is most often the database being away (a restart, a fail-over). The
# dead letter is stored in that same database, so the retries must outlast a real outage: 16
# retries doubling from 1 s and capped at 30 min cover about three hours before the last attempt.
INGEST_MAX_RETRIES = 16
INGEST_MIN_BACKOFF_MS = 1000
INGEST_MAX_BACKOFF_MS = 30 * 60 * 1000

#: ``ingest_events`` batches a worker process applies at once. The events queue has many threads
#: of its own (``worker.event_threads``) so that single events form large groups; a batch is
#: a group already, and each one being applied holds a database connection. Eight at once keep
#: two cores busy; more would only contend for them and for the connection pool.
BATCHES_AT_ONCE = 8
_batch_slots = Slots(BATCHES_AT_ONCE)


def _store_dead_event(message: dramatiq.MessageProxy, exception: BaseException) -> None:
    """An event's last attempt failed: keep it whole, to be replayed once the cause is fixed."""
    from ingest.service import failure_label, store_dead_letter

    attempts = message.options.get("retries", 0)
    reason = str(exception) if isinstance(exception, Retry) else failure_label(exception)
    event = message.args[0] if message.args else None
    letter = store_dead_letter(get_runtime().factory, event, f"{reason} ({attempts} attempts)")
    log.warning(
        "message %s: dead letter %s after %d attempts", message.message_id, letter, attempts
    )


@actor(
    EVENTS_QUEUE,
    max_retries=INGEST_MAX_RETRIES,
    min_backoff=INGEST_MIN_BACKOFF_MS,
    max_backoff=INGEST_MAX_BACKOFF_MS,
    dead_letter=_store_dead_event,
)
def ingest_event(event: Any) -> None:
    """One shop event from the queue.

    The process's threads apply their events together (``ingest.grouped``): this one returns
    once the group holding its event has committed. A bad event (invalid, or an ``event_id``
    reused for other content) is stored as a dead letter at once: sending it again cannot help.
    A failure while applying is retried with backoff and becomes a dead letter only after the
    last attempt (see ``DeadLetterOnFinalFailure``).
    """
    from ingest.grouped import grouped_ingest
    from ingest.schema import event_id_of
    from ingest.service import failure_label, store_dead_letter

    runtime = get_runtime()
    try:
        result = grouped_ingest(get_runtime).submit(event)
        if result.status in ("rejected", "conflict") and not result.retryable:
            letter = store_dead_letter(runtime.factory, event, result.error or result.status)
            log.warning("event %s %s (dead letter %s)", result.event_id, result.status, letter)
    except Exception as exc:
        # Raised as Retry, which dramatiq does not log: its own error line would print the
        # message's arguments, that is the whole event with its contacts.
        label = f"event {event_id_of(event)} not ingested: {failure_label(exc)}"
        log.warning("%s; to be retried", label)
        raise Retry(label) from None
    if result.retryable:
        raise Retry(f"event {result.event_id} not applied: {result.outcome}")


def _store_dead_events(message: dramatiq.MessageProxy, exception: BaseException) -> None:
    """A list's last attempt failed: a dead letter for each of its events not applied."""
    from ingest.queued import store_unapplied
    from ingest.service import failure_label, store_dead_letter

    attempts = message.options.get("retries", 0)
    reason = str(exception) if isinstance(exception, Retry) else failure_label(exception)
    events = message.args[0] if message.args else None
    error = f"{reason} ({attempts} attempts)"
    factory = get_runtime().factory
    if isinstance(events, list):
        letters = store_unapplied(factory, events, error)
    else:
        letters = [store_dead_letter(factory, events, error)]
    log.warning(
        "message %s: %d dead letters after %d attempts",
        message.message_id,
        len(letters),
        attempts,
    )


@actor(
    EVENTS_QUEUE,
    max_retries=INGEST_MAX_RETRIES,
    min_backoff=INGEST_MIN_BACKOFF_MS,
    max_backoff=INGEST_MAX_BACKOFF_MS,
    dead_letter=_store_dead_events,
)
def ingest_events(events: list[Any]) -> None:
    """Many shop events in one message, applied as one batch (a fixed number of statements).

    Each event refused for its content becomes its own dead letter at once; the others apply.
    When applying fails on our side the whole message is retried with backoff, which is safe:
    the events already applied are then duplicates. After the last attempt the events not
    applied become dead letters, one each.
    """
    from ingest.queued import ingest_queued
    from ingest.service import failure_label, store_dead_letter

    runtime = get_runtime()
    if not isinstance(events, list):
        letter = store_dead_letter(
            runtime.factory, events, "a message of ingest_events holds a list"
        )
        log.warning("message not a list of events (dead letter %s)", letter)
        return
    try:
        with _batch_slots.held():
            batch = ingest_queued(runtime.factory, events, runtime.config)
    except Exception as exc:
        # Raised as Retry, which dramatiq does not log: its own error line would print the
        # message's arguments, that is every event with its contacts.
        label = f"{len(events)} events not ingested: {failure_label(exc)}"
        log.warning("%s; to be retried", label)
        raise Retry(label) from None
    if batch.retry is not None:
        raise Retry(batch.retry)


@actor(EVENTS_QUEUE, max_retries=3, min_backoff=1000)
def dead_letter_event(message_data: dict[str, Any], exception_data: dict[str, Any]) -> None:
    """Failure callbacks already queued by earlier versions, which sent one after every failed
    attempt: only the one sent after the last attempt stores a dead letter."""
    from ingest.service import failure_label, store_dead_letter

    options = message_data.get("options") or {}
    attempts = int(options.get("retries", 0))
    if attempts <= int(options.get("max_retries", INGEST_MAX_RETRIES)):
        return  # that attempt was retried
    args = message_data.get("args") or [None]
    # The type only: the message of a database error can quote the event's contacts.
    error = f"{exception_data.get('type', 'error')} ({attempts} attempts)"
    try:
        store_dead_letter(get_runtime().factory, args[0], error)
    except Exception as exc:
        raise Retry(f"dead letter not stored: {failure_label(exc)}") from None


@actor(SENDS_QUEUE, max_retries=3, min_backoff=1000)
def send_survey(survey_id: int) -> None:
    """Send one invitation. Safe to receive twice: the row is claimed before anything is sent."""
    from wiring.services import sender

    runtime = get_runtime()
    outcome = sender(runtime).send(survey_id, runtime.config)
    if outcome.requeue:
        send_survey.send(survey_id)


@actor(SENDS_QUEUE, max_retries=0)
def send_reminder(survey_id: int, expected_sent: int) -> None:
    """Send reminder number ``expected_sent + 1``; a copy of this message sends nothing."""
    from wiring.services import sender

    runtime = get_runtime()
    sender(runtime).send_reminder(survey_id, expected_sent, runtime.config)
