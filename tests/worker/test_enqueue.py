"""The batch enqueue writes what dramatiq's own enqueue writes, and a real worker (with this
product's middleware) runs, retries and acknowledges those messages like any other."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import dramatiq
import pytest
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message

from worker.broker import middleware
from worker.enqueue import send_many


@pytest.fixture
def broker(redis_url: str) -> Iterator[RedisBroker]:
    namespace = f"nps-test-{uuid.uuid4().hex[:8]}"
    built = RedisBroker(url=redis_url, namespace=namespace, middleware=middleware())
    yield built
    for key in built.client.scan_iter(f"{namespace}*"):
        built.client.delete(key)
    built.close()


def _stored(broker: RedisBroker, queue: str) -> list[dict[str, Any]]:
    key = f"{broker.namespace}:{queue}"
    ids = broker.client.lrange(key, 0, -1)
    raw = broker.client.hmget(f"{key}.msgs", ids)
    return [Message.decode(data).asdict() for data in raw]


def test_a_batch_message_is_stored_as_dramatiqs_own_enqueue_stores_it(broker: RedisBroker):
    @dramatiq.actor(queue_name="sends", broker=broker, actor_name="send_survey")
    def send_survey(survey_id: int) -> None:
        pass

    send_survey.send(7)
    send_many(send_survey, [(8,)])
    own, ours = _stored(broker, "sends")
    for message in (own, ours):
        # The Redis entry's id is the one the message carries, so the worker's ack finds it.
        assert set(message) == {
            "queue_name",
            "actor_name",
            "args",
            "kwargs",
            "options",
            "message_id",
            "message_timestamp",
        }
        assert set(message["options"]) == {"redis_message_id"}
    assert {k: own[k] for k in ("queue_name", "actor_name", "kwargs")} == {
        k: ours[k] for k in ("queue_name", "actor_name", "kwargs")
    }
    assert (tuple(own["args"]), tuple(ours["args"])) == ((7,), (8,))
    ids = broker.client.lrange(f"{broker.namespace}:sends", 0, -1)
    assert ids[1].decode() == ours["options"]["redis_message_id"]
    # Both in the queue's list and hash of the broker's namespace; no delay queue.
    assert {k.decode() for k in broker.client.scan_iter(f"{broker.namespace}:sends*")} == {
        f"{broker.namespace}:sends",
        f"{broker.namespace}:sends.msgs",
    }


def test_a_real_worker_runs_retries_and_acknowledges_batch_messages(broker: RedisBroker):
    """One message fails once and goes through the delay queue (dramatiq's retry, a new Redis
    id); every message runs once successfully, and nothing is left unacknowledged."""
    done: list[int] = []
    failed_once: set[int] = set()
    lock = threading.Lock()

    @dramatiq.actor(
        queue_name="sends",
        broker=broker,
        actor_name="send_survey",
        min_backoff=10,
        max_backoff=20,
        max_retries=3,
    )
    def send_survey(survey_id: int) -> None:
        with lock:
            if survey_id % 50 == 0 and survey_id not in failed_once:
                failed_once.add(survey_id)
                raise RuntimeError("first attempt fails")
            done.append(survey_id)

    assert send_many(send_survey, ((i,) for i in range(1, 201))) == 200
    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        broker.join("sends", timeout=30_000)
        worker.join()
    finally:
        worker.stop()
    assert sorted(done) == list(range(1, 201))
    assert failed_once == {50, 100, 150, 200}
    ns = broker.namespace
    # Every message acknowledged: no stored body, no id in a queue or an ack set, no dead letter.
    for key in (f"{ns}:sends", f"{ns}:sends.msgs", f"{ns}:sends.DQ", f"{ns}:sends.DQ.msgs"):
        assert broker.client.exists(key) == 0, key
    assert broker.client.exists(f"{ns}:sends.XQ") == 0
    for key in broker.client.scan_iter(f"{ns}:__acks__.*"):
        assert broker.client.scard(key) == 0, key
