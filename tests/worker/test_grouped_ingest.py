"""`ingest_event` messages taken by many threads at once: a real `nps-dispatch worker` on a real
Redis and PostgreSQL, its threads applying their single events in shared groups
(``ingest.grouped``). Each message keeps the outcome it has alone: applied once, a duplicate
applies nothing, a refused event is one dead letter, a failure on our side runs it again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import func, select, text

from ingest.deadletters import list_dead_letters
from ingest.service import ingest_event
from models import InboundEvent, Order, Survey
from tests.conftest import Database
from tests.factories import order_event, purchase
from tests.processes import started

# Contacts every event of these tests carries: never to appear in the worker's output.
EMAIL = "grouped.person@example.com"
PHONE = "+40721000999"


def count(db: Database, model: Any) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


def _enqueue(redis_url: str, events: list[Any], **options: Any) -> None:
    shop = RedisBroker(url=redis_url)
    for event in events:
        shop.enqueue(
            Message(
                queue_name="events",
                actor_name="ingest_event",
                args=(event,),
                kwargs={},
                options=options,
            )
        )
    shop.close()


@contextmanager
def running_worker(db: Database, redis_url: str, tmp_path: Path) -> Iterator[Path]:
    """`nps-dispatch worker`, one process of 8 threads and the events queue's own (as shipped);
    yields the file holding its output."""
    url = db.engine.url.render_as_string(hide_password=False)
    env = {
        **os.environ,
        "NPS_BROKER_URL": redis_url,
        "NPS_DATABASE_URL": url,
        "NPS_CONFIG": str(tmp_path / "absent.toml"),
        "NPS_SECRET_KEY": "test-secret-key",
        "NPS_INGEST_TOKEN": "t",
        "NPS_DASHBOARD_PASSWORD": "p",
        "NPS_LOG_LEVEL": "INFO",
    }
    output = tmp_path / "worker.log"
    with (
        output.open("wb") as sink,
        started(
            [sys.executable, "-m", "cli.main", "worker", "--processes", "1", "--threads", "8"],
            stop_within=60,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        ),
    ):
        yield output


def _until(condition: Callable[[], bool], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "the worker did not get there"
        time.sleep(0.2)


def _event(n: int) -> dict[str, Any]:
    return purchase(f"WG-{n}", f"wg-c{n % 5}", event_id=f"wg-{n}", email=EMAIL, phone=PHONE)


def test_many_messages_at_once_each_keep_their_own_outcome(
    pg_db: Database, redis_url: str, tmp_path: Path, runtime_for: Any
) -> None:
    runtime = runtime_for(pg_db)
    taken = purchase("WG-0", "wg-c0", event_id="wg-0", email=EMAIL, phone=PHONE)
    assert ingest_event(pg_db.factory, taken, runtime.config).status == "accepted"
    invalid = _event(99)
    del invalid["customer"]["id"]
    reused = order_event("cancelled", "WG-0", event_id="wg-0")
    good = [_event(n) for n in range(1, 41)]
    # Refused and repeated events among the good ones, all taken by the threads at once.
    messages = [*good[:10], taken, reused, *good[10:20], invalid, good[3], *good[20:]]
    _enqueue(redis_url, messages)
    with running_worker(pg_db, redis_url, tmp_path) as output:
        _until(
            lambda: count(pg_db, InboundEvent) == 41 and len(list_dead_letters(pg_db.factory)) == 2
        )
        time.sleep(1.0)  # anything still to come (a second dead letter, a retry) shows by now
    assert count(pg_db, InboundEvent) == 41 and count(pg_db, Order) == 41
    assert count(pg_db, Survey) == 5  # one per customer; the other purchases hit the cap
    letters = list_dead_letters(pg_db.factory)
    assert sorted(letter.event_id or "" for letter in letters) == ["wg-0", "wg-99"]
    with pg_db.session() as s:
        assert s.scalar(select(Order.cancelled_at).where(Order.external_id == "WG-0")) is None
    log = output.read_text()
    assert "batch of" in log  # the groups were applied and logged
    assert EMAIL not in log and PHONE not in log
    assert "Retrying" not in log


_REFUSE_LEDGER = """
CREATE FUNCTION test_refuse_ledger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM nextval('test_ledger_refusals');
  RAISE EXCEPTION 'ledger refused for %', NEW.external_id;
END $$
"""


@pytest.fixture
def ledger_refused(pg_db: Database) -> Iterator[Callable[[], int]]:
    """Every write to the ledger fails with a database error until the fixture's function to
    stop it is called; yields the number of writes refused so far (a sequence, which a rollback
    does not undo)."""
    with pg_db.engine.begin() as conn:
        conn.execute(text("CREATE SEQUENCE test_ledger_refusals"))
        conn.execute(text(_REFUSE_LEDGER))
        conn.execute(
            text(
                "CREATE TRIGGER test_refuse_ledger BEFORE INSERT ON inbound_events "
                "FOR EACH ROW EXECUTE FUNCTION test_refuse_ledger()"
            )
        )

    def refused() -> int:
        with pg_db.engine.connect() as conn:
            value = conn.execute(
                text(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END "
                    "FROM test_ledger_refusals"
                )
            ).scalar_one()
            return int(value)

    try:
        yield refused
    finally:
        _stop_refusing(pg_db)
        with pg_db.engine.begin() as conn:
            conn.execute(text("DROP SEQUENCE IF EXISTS test_ledger_refusals"))


def _stop_refusing(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER IF EXISTS test_refuse_ledger ON inbound_events"))
        conn.execute(text("DROP FUNCTION IF EXISTS test_refuse_ledger()"))


def test_messages_whose_group_failed_run_again_and_apply_once(
    pg_db: Database, redis_url: str, tmp_path: Path, ledger_refused: Callable[[], int]
) -> None:
    events = [_event(n) for n in range(1, 25)]
    _enqueue(redis_url, events, min_backoff=200, max_backoff=1000)
    with running_worker(pg_db, redis_url, tmp_path) as output:
        _until(lambda: ledger_refused() >= 2 * len(events))
        _stop_refusing(pg_db)
        _until(lambda: count(pg_db, InboundEvent) == len(events))
        time.sleep(1.0)  # a message applied twice would show by now
    assert count(pg_db, InboundEvent) == len(events) and count(pg_db, Order) == len(events)
    assert count(pg_db, Survey) == 5
    assert list_dead_letters(pg_db.factory) == []
    log = output.read_text()
    assert "to be retried" in log or "not applied" in log
    assert "ledger refused" not in log  # the database's message is never logged
    assert EMAIL not in log and PHONE not in log
