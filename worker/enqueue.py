"""Many messages for one actor in one broker round trip.

dramatiq's Redis broker enqueues one message per call: a Lua script run (``dispatch``,
``enqueue`` command) in its own round trip. :func:`send_many` runs the same script for every
message through one Redis pipeline, with the broker's ``before_enqueue`` / ``after_enqueue``
middleware hooks around each message as ``Actor.send`` would. Any other broker (the in-process
stub of the demo and the tests) gets one ``send`` per message.

The scheduler calls it only after its batch is committed: if the pipeline fails part-way, the
surveys it did not carry stay ``queued`` and the stuck-queue sweep enqueues them again; one
carried twice is harmless, the worker claims ``queued -> sending`` first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import uuid4

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis


def send_many(actor: dramatiq.Actor[Any, Any], arguments: Iterable[tuple[Any, ...]]) -> int:
    """Enqueue one message to ``actor`` per tuple of arguments; returns how many."""
    broker = actor.broker
    batch = list(arguments)
    if not isinstance(broker, RedisBroker):
        for args in batch:
            actor.send(*args)
        return len(batch)
    if not batch:
        return 0
    dispatch = broker.scripts["dispatch"]
    pipe = broker.client.pipeline(transaction=False)
    sent = []
    for args in batch:
        message = actor.message(*args)
        message = message.copy(options={"redis_message_id": str(uuid4())})
        broker.emit_before("enqueue", message, None)
        dispatch(
            keys=[broker.namespace],
            args=[
                "enqueue",
                current_millis(),
                message.queue_name,
                broker.broker_id,
                broker.heartbeat_timeout,
                broker.dead_message_ttl,
                broker._should_do_maintenance("enqueue"),
                broker._max_unpack_size(),  # type: ignore[no-untyped-call]
                message.options["redis_message_id"],
                message.encode(),
            ],
            client=pipe,
        )
        sent.append(message)
    pipe.execute()
    for message in sent:
        broker.emit_after("enqueue", message, None)
    return len(sent)


def batch_sender(actor: dramatiq.Actor[Any, Any]) -> Callable[[Sequence[int]], object]:
    """``send_many`` for an actor taking one id: the scheduler's ``enqueue_many``."""

    def enqueue_many(ids: Sequence[int]) -> object:
        return send_many(actor, ((i,) for i in ids))

    return enqueue_many
