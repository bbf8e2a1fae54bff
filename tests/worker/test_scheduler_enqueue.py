"""The scheduler process's side of the queue: a batch of due surveys goes to Redis in one
round trip, as messages a dramatiq worker runs like any other; and an idle loop sleeps until
the next survey is due."""

from __future__ import annotations

import uuid
from datetime import timedelta

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from dispatch.tick_report import TickReport
from tests.conftest import NOW
from worker.broker import middleware
from worker.enqueue import batch_sender, send_many
from worker.scheduling import MIN_PAUSE_SECONDS, pause_after


def test_a_batch_reaches_a_real_worker_through_one_pipeline(redis_url: str):
    broker = RedisBroker(url=redis_url, namespace=f"nps-test-{uuid.uuid4().hex[:8]}")
    received: list[int] = []

    @dramatiq.actor(queue_name="sends", broker=broker)
    def send_survey(survey_id: int) -> None:
        received.append(survey_id)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    try:
        batch_sender(send_survey)(list(range(1, 301)))
        assert broker.client.llen(f"{broker.namespace}:sends") == 300
        worker.start()
        broker.join("sends", timeout=20_000)
        worker.join()
    finally:
        worker.stop()
        for key in broker.client.scan_iter(f"{broker.namespace}*"):
            broker.client.delete(key)
        broker.close()
    assert sorted(received) == list(range(1, 301))


def test_other_brokers_get_one_send_per_message() -> None:
    broker = StubBroker(middleware=middleware())
    broker.emit_after("process_boot")

    @dramatiq.actor(queue_name="sends", broker=broker)
    def send_survey(survey_id: int) -> None:
        pass

    assert send_many(send_survey, [(1,), (2,), (3,)]) == 3
    assert broker.queues["sends"].qsize() == 3
    assert send_many(send_survey, []) == 0


def test_an_idle_loop_wakes_when_the_next_survey_is_due():
    idle, busy = TickReport(), TickReport(queued=3)
    assert pause_after(busy, None, NOW, 5.0) == 0.0
    assert pause_after(idle, None, NOW, 5.0) == 5.0
    assert pause_after(idle, NOW + timedelta(seconds=1.5), NOW, 5.0) == 1.5
    assert pause_after(idle, NOW + timedelta(minutes=3), NOW, 5.0) == 5.0
    # Due already, yet not claimed (held by another scheduler): a short pause, not a spin.
    assert pause_after(idle, NOW - timedelta(seconds=3), NOW, 5.0) == MIN_PAUSE_SECONDS
