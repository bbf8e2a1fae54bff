"""How many messages a worker process takes ahead from Redis (``worker.broker.QueuePrefetch``).

A real dramatiq Worker on the test Redis: its threads are held inside the actor, so the messages
it has taken are those gone from the queue's Redis list while nothing is acknowledged."""

from __future__ import annotations

import threading
import time
import uuid

import dramatiq
import dramatiq.worker
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from worker.broker import PREFETCH_PER_THREAD, PREFETCH_VARIABLE, QueuePrefetch

THREADS = 2
MESSAGES = 60

pytestmark = pytest.mark.redis


def _taken_ahead(redis_url: str) -> int:
    """Start a worker of THREADS threads on a queue of MESSAGES held messages: how many it took
    from Redis once that stopped changing (the worker is then released and stopped)."""
    queue = f"prefetch_{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=redis_url, middleware=[QueuePrefetch()])
    release = threading.Event()

    def hold() -> None:
        release.wait(10)

    held = dramatiq.actor(broker=broker, queue_name=queue)(hold)
    for _ in range(MESSAGES):
        held.send()
    client = redis.Redis.from_url(redis_url)
    worker = dramatiq.Worker(broker, worker_threads=THREADS, worker_timeout=50)
    worker.start()
    try:
        taken, since = -1, time.monotonic()
        deadline = since + 10
        while time.monotonic() < deadline:
            now_taken = MESSAGES - int(client.llen(f"dramatiq:{queue}"))
            if now_taken != taken:
                taken, since = now_taken, time.monotonic()
            elif time.monotonic() - since > 0.5:
                break
            time.sleep(0.02)
        return taken
    finally:
        release.set()
        worker.stop()
        broker.flush_all()
        broker.close()
        client.close()


def test_a_worker_takes_eight_messages_a_thread_ahead(redis_url, monkeypatch):
    # dramatiq's default would be two a thread: 4 here.
    monkeypatch.delenv(PREFETCH_VARIABLE, raising=False)
    assert _taken_ahead(redis_url) == THREADS * PREFETCH_PER_THREAD


def test_the_operators_dramatiq_setting_is_left_as_set(redis_url, monkeypatch):
    # dramatiq reads the variable when it is imported; stand in for that reading here.
    monkeypatch.setenv(PREFETCH_VARIABLE, "3")
    monkeypatch.setattr(dramatiq.worker, "QUEUE_PREFETCH", 3)
    assert _taken_ahead(redis_url) == 3
