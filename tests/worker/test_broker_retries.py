"""A failed queue message whose retry cannot be enqueued (Redis down at that moment) is not
lost: it is enqueued once Redis is back, or, when Redis stays away, dead-lettered in the
database. dramatiq's own Retries only logs the failed enqueue and then acks the message."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import pytest
import redis
from dramatiq import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import select

from ingest.service import store_dead_letter
from models import DeadLetter
from tests.conftest import Database, service_missing
from tests.factories import purchase
from worker.broker import DeadLetterOnFinalFailure, DurableRetries


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def redis_later(tmp_path: Path) -> Iterator[tuple[int, threading.Event]]:
    """A port where a private redis-server starts only when the test sets the event."""
    binary = shutil.which("redis-server")
    if binary is None:
        service_missing("redis-server")
    port, start = _free_port(), threading.Event()
    procs: list[subprocess.Popen[bytes]] = []

    def run() -> None:
        start.wait(30)
        argv = [binary or "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        procs.append(subprocess.Popen([*argv, "--save", "", "--dir", str(tmp_path)]))

    starter = threading.Thread(target=run, daemon=True)
    starter.start()
    yield port, start
    start.set()
    starter.join(5)
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def _broker(port: int, waits: tuple[float, ...], **extra: Any) -> tuple[RedisBroker, Any]:
    broker = RedisBroker(
        url=f"redis://127.0.0.1:{port}/0",
        middleware=[DeadLetterOnFinalFailure(), DurableRetries(enqueue_waits=waits)],
    )

    def ingest(event: Any) -> None:  # stands for the real actor; never run here
        raise AssertionError

    actor = dramatiq.actor(queue_name="events", broker=broker, max_retries=5, **extra)(ingest)
    return broker, actor


def test_a_retry_is_enqueued_once_redis_is_back(redis_later) -> None:
    port, start_redis = redis_later
    broker, actor = _broker(port, waits=(0.3,) * 40)
    event = purchase("R-1")
    message = MessageProxy(actor.message(event))
    threading.Timer(1.0, start_redis.set).start()  # down for the first attempts

    broker.emit_after("process_message", message, exception=RuntimeError("database down"))

    assert not message.failed
    client = redis.Redis(port=port)
    stored = client.hgetall("dramatiq:events.DQ.msgs")
    assert len(stored) == 1  # exactly one retry, on the delay queue
    retried = dramatiq.Message.decode(next(iter(stored.values())))
    assert retried.message_id == message.message_id
    assert retried.options["retries"] == 1  # the failed enqueues did not count as attempts
    assert retried.args == (event,)


def test_a_retry_redis_never_takes_becomes_a_dead_letter(sqlite_db: Database) -> None:
    event = purchase("R-2")

    def keep(message: dramatiq.MessageProxy, exception: BaseException) -> None:
        store_dead_letter(sqlite_db.factory, message.args[0], "retry not enqueued")

    broker, actor = _broker(_free_port(), waits=(0.0, 0.0), dead_letter=keep)
    message = MessageProxy(actor.message(event))

    broker.emit_after("process_message", message, exception=RuntimeError("database down"))

    assert message.failed  # so the worker nacks it into dramatiq's dead-letter queue
    with sqlite_db.session() as s:
        letters = s.scalars(select(DeadLetter)).all()
    assert [letter.event_id for letter in letters] == [event["event_id"]]


def test_a_dead_letter_that_cannot_be_stored_runs_the_message_again_later(redis_later) -> None:
    port, start_redis = redis_later
    start_redis.set()
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            threading.Event().wait(0.05)

    def keep(message: dramatiq.MessageProxy, exception: BaseException) -> None:
        raise RuntimeError("database down")

    broker, actor = _broker(port, waits=(), dead_letter=keep)
    event = purchase("R-3")
    message = MessageProxy(actor.message_with_options(args=(event,), retries=5))
    message.options["retries"] = 5  # the last attempt

    broker.emit_after("process_message", message, exception=RuntimeError("database down"))

    stored = client.hgetall("dramatiq:events.DQ.msgs")
    assert len(stored) == 1  # not only in dramatiq's dead-letter queue, out of erasure's reach
    again = dramatiq.Message.decode(next(iter(stored.values())))
    assert again.args == (event,)


def test_the_redis_broker_keeps_failed_messages_briefly(monkeypatch, redis_url) -> None:
    monkeypatch.setenv("NPS_BROKER_URL", redis_url)
    from worker.broker import DEAD_MESSAGE_TTL_MS, _make_broker

    made = _make_broker()
    assert isinstance(made, RedisBroker)
    assert made.dead_message_ttl == DEAD_MESSAGE_TTL_MS <= 3_600_000
