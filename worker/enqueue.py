"""Many messages for one actor in one broker round trip.

dramatiq's Redis broker enqueues one message per call: a run of its Lua script, which stores
the message in the queue's hash (``HSET <namespace>:<queue>.msgs <id> <message>``) and appends
its id to the queue (``RPUSH <namespace>:<queue> <id>``), in a round trip of its own.
:func:`send_many` does the same two writes for a whole batch, in one ``MULTI``/``EXEC``: a worker
never sees an id whose message is not stored yet, and each message is built as ``Actor.send``
builds it, with the broker's ``before_enqueue`` / ``after_enqueue`` middleware hooks around it.
What the script does besides (recording the sender's heartbeat, and now and then handing back
the messages of workers gone silent) is left to the workers' own calls, which do it too. Any
other broker (the in-process stub of the demo and the tests) gets one ``send`` per message.

The scheduler calls it only after its batch is committed: if the write fails, the surveys stay
``queued`` and the stuck-queue sweep enqueues them again; a message carried twice is harmless,
the worker claims ``queued -> sending`` first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any
from uuid import uuid4

import dramatiq
from dramatiq.brokers.redis import RedisBroker


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
    queue = f"{broker.namespace}:{actor.queue_name}"
    messages: list[dramatiq.Message[Any]] = []
    stored: dict[str, bytes] = {}
    for args in batch:
        # One id for the message and its Redis entry: the broker gives a retried copy a new
        # Redis id when it enqueues it again.
        message_id = str(uuid4())
        message: dramatiq.Message[Any] = dramatiq.Message(
            queue_name=actor.queue_name,
            actor_name=actor.actor_name,
            args=args,
            kwargs={},
            options={"redis_message_id": message_id},
            message_id=message_id,
        )
        broker.emit_before("enqueue", message, None)
        stored[message_id] = message.encode()
        messages.append(message)
    with broker.client.pipeline(transaction=True) as pipe:
        pipe.hset(f"{queue}.msgs", mapping=stored)  # type: ignore[arg-type]
        pipe.rpush(queue, *stored)
        pipe.execute()
    for message in messages:
        broker.emit_after("enqueue", message, None)
    return len(messages)


def batch_sender(actor: dramatiq.Actor[Any, Any]) -> Callable[[Sequence[int]], object]:
    """``send_many`` for an actor taking one id: the scheduler's ``enqueue_many``."""

    def enqueue_many(ids: Sequence[int]) -> object:
        return send_many(actor, ((i,) for i in ids))

    return enqueue_many
