"""The queue path: the real `ingest_event` actor run by a real dramatiq Worker."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dramatiq import Worker
from sqlalchemy import func, select

from ingest.deadletters import list_dead_letters, replay_dead_letters
from models import DeadLetter, InboundEvent, Order, Survey
from tests.conftest import Database, sqlite_database
from tests.factories import order_event, purchase
from tests.processes import started
from worker.actors import ingest_event
from worker.broker import EVENTS_QUEUE, broker


@pytest.fixture
def stub_worker():
    broker.flush_all()
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield worker
    worker.stop()


def count(db: Database, model) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def test_same_event_twice_on_the_queue_has_one_effect(db, runtime_for, stub_worker):
    runtime_for(db)
    event = purchase("Q-1")
    ingest_event.send(event)
    ingest_event.send(event)
    ingest_event.send(order_event("delivered", "Q-1"))
    broker.join(EVENTS_QUEUE)
    stub_worker.join()
    assert count(db, Order) == 1 and count(db, Survey) == 1 and count(db, InboundEvent) == 2
    with db.session() as s:
        assert s.scalar(select(Survey.state)) == "scheduled"


def test_bad_event_goes_to_dead_letters_and_replays(sqlite_db, runtime_for, stub_worker):
    runtime = runtime_for(sqlite_db)
    bad = purchase("Q-2")
    del bad["customer"]["id"]
    ingest_event.send(bad)
    broker.join(EVENTS_QUEUE)
    stub_worker.join()
    letters = list_dead_letters(sqlite_db.factory)
    assert len(letters) == 1
    assert letters[0].event_id == bad["event_id"]
    assert "customer.id: Field required" in letters[0].error
    assert count(sqlite_db, Order) == 0
    # Still bad: replay keeps it listed with the error.
    [(letter_id, result)] = replay_dead_letters(sqlite_db.factory, runtime.config)
    assert result.status == "rejected" and len(list_dead_letters(sqlite_db.factory)) == 1
    # Fixed (here: the stored payload corrected by an operator), replay takes it once.
    with sqlite_db.session() as s, s.begin():
        row = s.get(DeadLetter, letter_id)
        row.payload = row.payload.replace('"customer": {', '"customer": {"id": "c-77", ')
    [(_, result)] = replay_dead_letters(sqlite_db.factory, runtime.config)
    assert result.status == "accepted"
    assert list_dead_letters(sqlite_db.factory) == []
    assert count(sqlite_db, Order) == 1


def test_a_reused_event_id_on_the_queue_is_a_dead_letter_with_the_reason(
    db, runtime_for, stub_worker, caplog
):
    caplog.set_level(logging.INFO, logger="dramatiq")
    runtime_for(db)
    ingest_event.send(purchase("Q-3", event_id="evt-q3"))
    broker.join(EVENTS_QUEUE)
    ingest_event.send(order_event("cancelled", "Q-3", event_id="evt-q3"))
    broker.join(EVENTS_QUEUE)
    stub_worker.join()
    [letter] = list_dead_letters(db.factory)
    assert letter.event_id == "evt-q3"
    assert letter.error.startswith("event_id: already used by a different event")
    assert '"order.cancelled"' in letter.payload
    # Not retried (it cannot get better), and not applied: the survey was not withdrawn.
    assert not any("Retrying message" in r.getMessage() for r in caplog.records)
    with db.session() as s:
        assert s.scalar(select(Survey.state)) != "withdrawn"
        assert s.scalar(select(Order.cancelled_at)) is None


def test_an_implausible_date_on_the_queue_is_a_dead_letter_at_once(
    db, runtime_for, stub_worker, caplog
):
    caplog.set_level(logging.INFO, logger="dramatiq")
    runtime_for(db)
    far = purchase("Q-4", at="9999-12-31T00:00:00Z")
    ingest_event.send_with_options(args=(far,), min_backoff=20, max_backoff=200)
    broker.join(EVENTS_QUEUE, fail_fast=False)
    stub_worker.join()
    [letter] = list_dead_letters(db.factory)
    assert letter.error.startswith("occurred_at: must not be more than 1 day after")
    assert not any("Retrying message" in r.getMessage() for r in caplog.records)
    assert count(db, Order) == 0 and count(db, InboundEvent) == 0


def test_redis_worker_process_takes_duplicates_once(redis_url, tmp_path: Path):
    """The production path: `nps-dispatch worker` on a real Redis, events enqueued by a shop."""
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    db_path = tmp_path / "redis.db"
    database = sqlite_database(db_path)
    env = {
        **os.environ,
        "NPS_BROKER_URL": redis_url,
        "NPS_DATABASE_URL": f"sqlite:///{db_path}",
        "NPS_CONFIG": str(tmp_path / "absent.toml"),
        "NPS_SECRET_KEY": "k",
        "NPS_INGEST_TOKEN": "t",
        "NPS_DASHBOARD_PASSWORD": "p",
    }
    shop = RedisBroker(url=redis_url)
    event = purchase("R-1")
    for _ in range(3):  # the shop's own retry sent it three times
        shop.enqueue(
            Message(
                queue_name="events", actor_name="ingest_event", args=(event,), kwargs={}, options={}
            )
        )
    with started(
        [sys.executable, "-m", "cli.main", "worker", "--processes", "1", "--threads", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and count(database, InboundEvent) < 1:
            time.sleep(0.2)
        time.sleep(1.0)  # let the two copies be processed too
        assert count(database, InboundEvent) == 1
        assert count(database, Survey) == 1
