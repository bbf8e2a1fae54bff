"""The queue path for many events in one message: the real `ingest_events` actor run by a real
dramatiq Worker (the stub broker, and a `nps-dispatch worker` process on a real Redis)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from dramatiq import Retry, Worker
from sqlalchemy import func, select

from ingest.deadletters import list_dead_letters
from ingest.queued import store_unapplied
from models import InboundEvent, Order, Survey
from tests.conftest import Database, sqlite_database
from tests.factories import order_event, purchase
from tests.processes import started
from worker.actors import BATCHES_AT_ONCE, _batch_slots, ingest_events
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


def test_a_list_applies_its_good_events_and_dead_letters_each_bad_one(
    db, runtime_for, stub_worker, caplog
):
    caplog.set_level(logging.INFO, logger="dramatiq")
    runtime_for(db)
    first, second = purchase("QB-1", "qb-c1"), purchase("QB-2", "qb-c2")
    bad = purchase("QB-3", "qb-c3")
    del bad["customer"]["id"]
    reused = {**order_event("cancelled", "QB-1"), "event_id": first["event_id"]}
    events = [first, second, bad, first, order_event("delivered", "QB-2"), reused]
    ingest_events.send(events)
    broker.join(EVENTS_QUEUE)
    stub_worker.join()
    assert count(db, Order) == 2 and count(db, Survey) == 2 and count(db, InboundEvent) == 3
    letters = list_dead_letters(db.factory)
    assert sorted(letter.event_id for letter in letters) == sorted(
        [bad["event_id"], first["event_id"]]
    )
    assert not any("Retrying message" in r.getMessage() for r in caplog.records)
    # The same message again (a redelivery) changes nothing and stores no second letter.
    ingest_events.send(events)
    broker.join(EVENTS_QUEUE)
    stub_worker.join()
    assert count(db, Order) == 2 and count(db, InboundEvent) == 3
    assert len(list_dead_letters(db.factory)) == 2
    with db.session() as s:
        assert s.scalar(select(Order.cancelled_at).where(Order.external_id == "QB-1")) is None


def test_after_the_last_attempt_only_the_events_not_applied_become_dead_letters(db, runtime_for):
    runtime = runtime_for(db)
    applied, lost = purchase("QL-1", "ql-c1"), purchase("QL-2", "ql-c2")
    ingest_events.fn([applied])
    letters = store_unapplied(runtime.factory, [applied, lost], "OperationalError (16 attempts)")
    assert len(letters) == 1
    [letter] = list_dead_letters(db.factory)
    assert letter.event_id == lost["event_id"] and letter.error.startswith("OperationalError")


def test_redis_worker_process_applies_lists_once(redis_url, tmp_path: Path):
    """The production path: `nps-dispatch worker` on a real Redis, lists enqueued by a shop."""
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
    events = [purchase(f"RL-{i}", f"rl-c{i}") for i in range(20)]
    for _ in range(2):  # the shop's own retry sent it twice
        shop.enqueue(
            Message(
                queue_name="events",
                actor_name="ingest_events",
                args=(events,),
                kwargs={},
                options={},
            )
        )
    with started(
        [sys.executable, "-m", "cli.main", "worker", "--processes", "1", "--threads", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and count(database, InboundEvent) < 20:
            time.sleep(0.2)
        time.sleep(1.0)  # let the second copy be processed too
        assert count(database, InboundEvent) == 20
        assert count(database, Survey) == 20


def test_after_the_last_attempt_an_event_reusing_a_taken_event_id_becomes_a_dead_letter(
    db, runtime_for, now, frozen_clock
):
    """The ledger holds the id, but for other content: this event was never applied."""
    runtime = runtime_for(db)
    first = purchase("QR-1", "qr-c1", at=now - timedelta(hours=1))
    reused = {**order_event("cancelled", "QR-1", at=now), "event_id": first["event_id"]}
    ingest_events.fn([first])
    letters = store_unapplied(
        runtime.factory, [first, reused], "OperationalError (16 attempts)", now=now
    )
    assert len(letters) == 1
    [letter] = list_dead_letters(db.factory)
    assert letter.event_id == first["event_id"] and '"order.cancelled"' in letter.payload


def test_batches_that_failed_do_not_keep_their_place_among_those_applied_at_once(
    db, runtime_for, tmp_path: Path
):
    broken = sqlite_database(tmp_path / "broken.db")
    with broken.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE inbound_events")
    runtime_for(broken)
    for n in range(BATCHES_AT_ONCE + 2):
        with pytest.raises(Retry):
            ingest_events.fn([purchase(f"QF-{n}", f"qf-c{n}")])
    assert _batch_slots.taken == 0  # none left with this thread either
    broken.engine.dispose()
    runtime_for(db)
    # Had a failed batch kept its place, this one would wait for ever: run it in a thread.
    applying = threading.Thread(target=ingest_events.fn, args=([purchase("QF-ok", "qf-ok")],))
    applying.start()
    applying.join(30)
    assert not applying.is_alive()
    assert count(db, Order) == 1 and count(db, InboundEvent) == 1
