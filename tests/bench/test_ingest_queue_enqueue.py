"""The queue benchmark puts its timed messages on Redis at once, writing dramatiq's keys itself:
a worker must take them exactly as messages its broker enqueued, or the benchmark would time a
queue the product never sees."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from bench.ingest_queue import _enqueue_at_once


@pytest.fixture
def bench_redis(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("NPS_BENCH_REDIS_URL", redis_url)
    return redis_url


def _drain(broker: RedisBroker, queue: str) -> list[Any]:
    consumer = broker.consume(queue, prefetch=100, timeout=100)
    taken = []
    try:
        while (message := next(consumer)) is not None:
            taken.append(message)
            consumer.ack(message)
    finally:
        consumer.close()
    return taken


def test_messages_enqueued_at_once_are_taken_as_the_brokers_own(bench_redis: str) -> None:
    broker = RedisBroker(url=bench_redis)
    client = redis.Redis.from_url(bench_redis)
    try:
        broker.enqueue(
            Message(
                queue_name="events",
                actor_name="ingest_event",
                args=({"n": 0},),
                kwargs={},
                options={},
            )
        )
        keys_of_one = set(client.keys("dramatiq:events*"))
        client.flushdb()

        payloads = [{"n": n} for n in range(2500)]  # more than one chunk of bodies
        _enqueue_at_once("events", "ingest_event", payloads)

        assert set(client.keys("dramatiq:events*")) == keys_of_one
        taken = _drain(broker, "events")
        assert [m.actor_name for m in taken] == ["ingest_event"] * len(payloads)
        assert [m.args for m in taken] == [(p,) for p in payloads]
        assert len({m.options["redis_message_id"] for m in taken}) == len(payloads)
        # Acknowledged as the broker's own: nothing is left behind.
        assert client.hlen("dramatiq:events.msgs") == 0
        assert client.llen("dramatiq:events") == 0
    finally:
        broker.close()
        client.close()
