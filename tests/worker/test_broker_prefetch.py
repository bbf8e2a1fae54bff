"""How many messages a worker process takes ahead from Redis (``worker.prefetch``).

A real dramatiq Worker on the test Redis: its threads are held inside the actors, so the messages
it has taken from a queue are those gone from that queue's Redis list while nothing is
acknowledged."""

from __future__ import annotations

import threading
import time
import uuid

import dramatiq
import dramatiq.worker
import pytest
import redis
from dramatiq.brokers.redis import RedisBroker

from config.settings import EVENT_THREADS_VARIABLE
from worker.broker import _make_broker
from worker.prefetch import PREFETCH_PER_THREAD, PREFETCH_VARIABLE, QueuePrefetch

THREADS = 2
MESSAGES = 60

pytestmark = pytest.mark.redis


def _taken_ahead(redis_url: str) -> dict[str, int]:
    """Start a worker of THREADS threads on two queues of MESSAGES held messages each, the first
    given the larger prefetch: how many it took from each queue once it had taken some from both
    and that stopped changing (the worker is then released and stopped), and the limit of the
    first queue's delay queue (``deep_delayed``), which must stay dramatiq's."""
    tag = uuid.uuid4().hex[:8]
    deep, other = f"deep_{tag}", f"other_{tag}"
    broker = RedisBroker(url=redis_url, middleware=[QueuePrefetch(deep)])
    release = threading.Event()

    def hold() -> None:
        release.wait(10)

    actors = {
        queue: dramatiq.actor(broker=broker, queue_name=queue, actor_name=f"hold_{queue}")(hold)
        for queue in (deep, other)
    }
    for held in actors.values():
        for _ in range(MESSAGES):
            held.send()
    client = redis.Redis.from_url(redis_url)
    worker = dramatiq.Worker(broker, worker_threads=THREADS, worker_timeout=50)
    worker.start()
    try:
        taken: dict[str, int] = {}
        since, deadline = time.monotonic(), time.monotonic() + 10
        while time.monotonic() < deadline:
            now = {q: MESSAGES - int(client.llen(f"dramatiq:{q}")) for q in (deep, other)}
            if now != taken or 0 in now.values():
                taken, since = now, time.monotonic()
            elif time.monotonic() - since > 0.5:
                break
            time.sleep(0.02)
        delayed = worker.consumers[f"{deep}.DQ"].prefetch
        return {"deep": taken[deep], "other": taken[other], "deep_delayed": delayed}
    finally:
        release.set()
        worker.stop()
        broker.flush_all()
        broker.close()
        client.close()


def test_the_events_queue_takes_eight_messages_a_thread_ahead_and_the_others_two(
    redis_url, monkeypatch
):
    monkeypatch.delenv(PREFETCH_VARIABLE, raising=False)
    monkeypatch.setattr(dramatiq.worker, "QUEUE_PREFETCH", 0)
    # The others keep dramatiq's two a thread: alerts must not queue behind many sends taken.
    # The delay queue (retries waiting for their time) keeps its own limit.
    assert _taken_ahead(redis_url) == {
        "deep": THREADS * PREFETCH_PER_THREAD,
        "other": THREADS * 2,
        "deep_delayed": THREADS * 1000,
    }


def test_a_zero_in_dramatiqs_variable_counts_as_unset(redis_url, monkeypatch):
    monkeypatch.setenv(PREFETCH_VARIABLE, "0")
    monkeypatch.setattr(dramatiq.worker, "QUEUE_PREFETCH", 0)
    assert _taken_ahead(redis_url)["deep"] == THREADS * PREFETCH_PER_THREAD


def test_the_operators_dramatiq_setting_is_left_as_set(redis_url, monkeypatch):
    # dramatiq reads the variable when it is imported; stand in for that reading here.
    monkeypatch.setenv(PREFETCH_VARIABLE, "3")
    monkeypatch.setattr(dramatiq.worker, "QUEUE_PREFETCH", 3)
    taken = _taken_ahead(redis_url)
    assert (taken["deep"], taken["other"]) == (3, 3)


def test_the_redis_broker_deepens_the_events_queue(redis_url, monkeypatch):
    monkeypatch.setenv("NPS_BROKER_URL", redis_url)
    broker = _make_broker()
    try:
        [prefetch] = [m for m in broker.middleware if isinstance(m, QueuePrefetch)]
        assert prefetch.queue_name == "events"
    finally:
        broker.close()


def test_the_events_queue_takes_at_least_one_message_for_each_of_its_own_threads(
    redis_url, monkeypatch
):
    monkeypatch.delenv(PREFETCH_VARIABLE, raising=False)
    monkeypatch.setattr(dramatiq.worker, "QUEUE_PREFETCH", 0)
    # More threads of its own than 8 a regular thread: each of them can have a message. (No
    # EventThreads middleware here: the messages stay held in the shared threads' queue.)
    monkeypatch.setenv(EVENT_THREADS_VARIABLE, str(THREADS * PREFETCH_PER_THREAD + 5))
    assert _taken_ahead(redis_url)["deep"] == THREADS * PREFETCH_PER_THREAD + 5


def test_the_operators_lower_setting_still_leaves_a_message_for_each_own_thread(
    redis_url, monkeypatch
):
    monkeypatch.setenv(PREFETCH_VARIABLE, "3")
    monkeypatch.setattr(dramatiq.worker, "QUEUE_PREFETCH", 3)
    monkeypatch.setenv(EVENT_THREADS_VARIABLE, "7")
    taken = _taken_ahead(redis_url)
    assert (taken["deep"], taken["other"]) == (7, 3)
