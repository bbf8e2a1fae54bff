"""One dead letter per event, after its last attempt only: the real `ingest_event` actor run by a
real dramatiq Worker on the StubBroker, failing through real database errors."""

from __future__ import annotations

import logging
import time

import pytest
from dramatiq import Message, MessageProxy, Worker
from dramatiq.brokers.stub import StubBroker
from dramatiq.errors import Retry
from sqlalchemy import func, select

from ingest.service import store_dead_letter
from models import Customer, DeadLetter, InboundEvent, Order, Survey
from tests.conftest import Database
from tests.factories import purchase
from tests.ingest.faults import (
    TRIGGER_SECRET,
    impatient,
    ingest_locked_out,
    surveys_refused_for_fail_orders,
)
from worker.actors import INGEST_MAX_RETRIES, dead_letter_event, ingest_event
from worker.broker import EVENTS_QUEUE, DeadLetterOnFinalFailure, broker

# Milliseconds: the actor's real retry count, with backoffs small enough for a test.
FAST = {"min_backoff": 20, "max_backoff": 200}


@pytest.fixture
def stub_worker():
    broker.flush_all()
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def retries_seen(caplog):
    """How many times dramatiq's Retries middleware re-enqueued a message."""
    caplog.set_level(logging.INFO, logger="dramatiq")

    def seen() -> int:
        return sum("Retrying message" in r.getMessage() for r in list(caplog.records))

    return seen


def count(db: Database, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def drain(worker: Worker) -> None:
    # A message that failed for good is re-raised by the stub's join unless told otherwise.
    assert isinstance(broker, StubBroker)
    broker.join(EVENTS_QUEUE, fail_fast=False)
    worker.join()


def test_an_event_failing_once_then_succeeding_leaves_no_dead_letter(
    db, runtime_for, stub_worker, retries_seen
):
    """The first attempt meets a lock held by another connection and gives up after 200 ms
    (a real lock timeout); the lock is released, and the retry goes through."""
    waiting = impatient(db)
    try:
        runtime_for(waiting)
        event = purchase("Q-10", customer_id="c-10")
        with ingest_locked_out(db):
            ingest_event.send_with_options(args=(event,), min_backoff=300, max_backoff=2000)
            deadline = time.monotonic() + 20
            while retries_seen() == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
        drain(stub_worker)
    finally:
        waiting.engine.dispose()
    assert retries_seen() >= 1  # it did fail first
    assert count(db, DeadLetter) == 0
    assert (count(db, Order), count(db, Survey), count(db, InboundEvent)) == (1, 1, 1)


def test_an_event_failing_every_attempt_leaves_exactly_one_dead_letter(
    db, runtime_for, stub_worker, retries_seen
):
    runtime_for(db)
    event = purchase("FAIL-11", customer_id="c-11")
    with surveys_refused_for_fail_orders(db):
        ingest_event.send_with_options(args=(event,), **FAST)
        drain(stub_worker)
    assert retries_seen() == INGEST_MAX_RETRIES
    with db.session() as s:
        letters = s.scalars(select(DeadLetter)).all()
        assert len(letters) == 1
        letter = letters[0]
        assert letter.event_id == event["event_id"]
        assert f"({INGEST_MAX_RETRIES + 1} attempts)" in letter.error
        assert f"event {event['event_id']} not applied: " in letter.error
        assert TRIGGER_SECRET not in letter.error and "INSERT" not in letter.error
        # Nothing half-written by any of the attempts.
        assert s.scalar(select(func.count()).select_from(Customer)) == 0
        assert s.scalar(select(func.count()).select_from(Order)) == 0
        assert s.scalar(select(func.count()).select_from(InboundEvent)) == 0


def test_a_dead_letter_is_stored_once_even_if_the_hook_runs_twice(db, runtime_for):
    runtime_for(db)
    event = purchase("Q-12")
    message = MessageProxy(
        Message(
            queue_name=EVENTS_QUEUE,
            actor_name="ingest_event",
            args=(event,),
            kwargs={},
            options={"retries": INGEST_MAX_RETRIES + 1},
        )
    )
    message.fail()
    hook = DeadLetterOnFinalFailure()
    for _ in range(2):
        hook.after_process_message(broker, message, exception=Retry("not applied"))
    with db.session() as s:
        assert s.scalars(select(DeadLetter.event_id)).all() == [event["event_id"]]


def test_a_message_still_to_be_retried_leaves_no_dead_letter(db, runtime_for):
    runtime_for(db)
    message = MessageProxy(
        Message(
            queue_name=EVENTS_QUEUE,
            actor_name="ingest_event",
            args=(purchase("Q-13"),),
            kwargs={},
            options={"retries": 1},
        )
    )
    DeadLetterOnFinalFailure().after_process_message(broker, message, exception=Retry("x"))
    assert count(db, DeadLetter) == 0


def test_store_dead_letter_keeps_one_letter_per_waiting_event(db):
    event = purchase("Q-14")
    first = store_dead_letter(db.factory, event, "first")
    assert store_dead_letter(db.factory, event, "second") == first
    other = store_dead_letter(db.factory, {**event, "order_id": "Q-15"}, "other content")
    junk = store_dead_letter(db.factory, ["not", "an", "event"], "junk")
    assert store_dead_letter(db.factory, ["not", "an", "event"], "junk") == junk
    assert len({first, other, junk}) == 3
    # Once replayed, the same event failing again is a new letter.
    with db.session() as s, s.begin():
        s.get(DeadLetter, first).replayed_at = s.get(DeadLetter, first).created_at
    assert store_dead_letter(db.factory, event, "again") not in (first, other, junk)


def test_failure_callbacks_queued_by_earlier_versions_keep_only_the_last_attempt(
    db, runtime_for, stub_worker
):
    """Earlier versions sent `dead_letter_event` after every failed attempt; those still in the
    queue on upgrade store a letter only for an attempt that was not retried."""
    runtime_for(db)
    event = purchase("Q-16")
    for retries in (1, 2, INGEST_MAX_RETRIES + 1):
        data = {"args": [event], "options": {"retries": retries}, "actor_name": "ingest_event"}
        dead_letter_event.send(data, {"type": "OperationalError", "message": "SQL with values"})
    drain(stub_worker)
    with db.session() as s:
        [letter] = s.scalars(select(DeadLetter)).all()
    assert letter.error == f"OperationalError ({INGEST_MAX_RETRIES + 1} attempts)"
