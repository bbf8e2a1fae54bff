"""The queue benchmark puts its timed messages on Redis itself, writing dramatiq's keys: a
consumer must take them exactly as messages the broker enqueued, or the benchmark would time a
queue the product's worker never reads."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from bench.ingest_queue import _store_bodies
from worker.broker import EVENTS_QUEUE, middleware


@pytest.fixture
def bench_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NPS_BENCH_REDIS_URL", redis_url)
    return redis_url


def _take_all(broker: RedisBroker, queue: str) -> list[Any]:
    consumer = broker.consume(queue, prefetch=100, timeout=100)
    taken = []
    try:
        while (message := next(consumer)) is not None:
            taken.append(message)
            consumer.ack(message)
    finally:
        consumer.close()
    return taken


def test_messages_put_on_redis_at_once_are_taken_as_the_brokers_own(bench_redis: str) -> None:
    # The product's broker as its worker builds it (the default namespace, its middleware).
    broker = RedisBroker(url=bench_redis, middleware=middleware())
    client = redis.Redis.from_url(bench_redis)
    try:
        broker.enqueue(
            Message(
                queue_name=EVENTS_QUEUE,
                actor_name="ingest_event",
                args=({"n": 0},),
                kwargs={},
                options={},
            )
        )
        keys_of_one = {k for k in client.keys("*") if b"__heartbeats__" not in k}
        client.flushdb()

        payloads = [{"n": n} for n in range(2500)]  # more than one chunk of bodies
        push = _store_bodies(EVENTS_QUEUE, "ingest_event", payloads)
        assert client.llen(f"dramatiq:{EVENTS_QUEUE}") == 0  # none visible before the push
        push()

        assert set(client.keys("*")) == keys_of_one
        taken = _take_all(broker, EVENTS_QUEUE)
        assert [m.actor_name for m in taken] == ["ingest_event"] * len(payloads)
        assert [m.args for m in taken] == [(p,) for p in payloads]
        assert all(set(m.options) == {"redis_message_id"} for m in taken)
        assert len({m.options["redis_message_id"] for m in taken}) == len(payloads)
        # Acknowledged as the broker's own: nothing is left behind.
        assert client.hlen(f"dramatiq:{EVENTS_QUEUE}.msgs") == 0
        assert client.llen(f"dramatiq:{EVENTS_QUEUE}") == 0
    finally:
        broker.close()
        client.close()
