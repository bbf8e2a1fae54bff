"""The dramatiq actors. Queue and actor names are part of the public contract (CONTRACT §1)."""

from __future__ import annotations

import logging
from typing import Any

from worker.broker import EVENTS_QUEUE, SENDS_QUEUE, actor
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


@actor(EVENTS_QUEUE, max_retries=5, min_backoff=1000, on_failure="dead_letter_event")
def ingest_event(event: Any) -> None:
    """One shop event from the queue. A bad event goes to the dead-letter store, not retried."""
    from ingest.service import ingest_event as ingest
    from ingest.service import store_dead_letter

    runtime = get_runtime()
    result = ingest(runtime.factory, event, runtime.config)
    if result.status == "rejected":
        letter = store_dead_letter(runtime.factory, event, result.error or "rejected")
        log.warning("event %s rejected (dead letter %s): %s", result.event_id, letter, result.error)


@actor(EVENTS_QUEUE, max_retries=0)
def dead_letter_event(message_data: dict[str, Any], exception_data: dict[str, Any]) -> None:
    """Retries exhausted on an event: keep it whole, to be replayed once the cause is fixed."""
    from ingest.service import store_dead_letter

    args = message_data.get("args") or [None]
    error = f"{exception_data.get('type', 'error')}: {exception_data.get('message', '')}"
    store_dead_letter(get_runtime().factory, args[0], error)


@actor(SENDS_QUEUE, max_retries=3, min_backoff=1000)
def send_survey(survey_id: int) -> None:
    """Send one invitation. Safe to receive twice: the row is claimed before anything is sent."""
    from worker.wiring import sender

    runtime = get_runtime()
    outcome = sender(runtime).send(survey_id, runtime.config)
    if outcome.requeue:
        send_survey.send(survey_id)


@actor(SENDS_QUEUE, max_retries=0)
def send_reminder(survey_id: int, expected_sent: int) -> None:
    """Send reminder number ``expected_sent + 1``; a copy of this message sends nothing."""
    from worker.wiring import sender

    runtime = get_runtime()
    sender(runtime).send_reminder(survey_id, expected_sent, runtime.config)
