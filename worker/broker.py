"""The dramatiq broker, chosen once at import from NPS_BROKER_URL.

dramatiq binds actors to the global broker when they are declared, so this module must be
imported before any actor module: Redis when NPS_BROKER_URL is set, otherwise an in-process
StubBroker (the `demo` and the tests) that `worker.inprocess` drives with a real dramatiq Worker.
The broker only carries work; what is due lives in the database, not in delayed messages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AgeLimit, Middleware, Retries, default_middleware

import logs.metrics  # noqa: F401 - each worker process's metrics exist from its boot
from config.settings import environ
from wiring.heap import freeze_startup_heap
from worker.event_threads import EventThreads
from worker.log_middleware import LoggingMiddleware
from worker.prefetch import QueuePrefetch

EVENTS_QUEUE = "events"
SENDS_QUEUE = "sends"

HEARTBEAT_TIMEOUT_MS = 15_000
MAINTENANCE_CHANCE_PER_MILLION = 20_000
#: How long dramatiq keeps a failed message in its Redis dead-letter queue (default 7 days).
#: The durable copy is our database dead letter, which erasure deletes; the Redis copy would
#: keep the event's contacts out of erasure's reach.
DEAD_MESSAGE_TTL_MS = 10 * 60 * 1000
#: When a failed message's dead letter cannot be stored, it is run again after this long.
DEAD_LETTER_RETRY_MS = 60_000

F = TypeVar("F", bound=Callable[..., Any])
DeadLetterHook = Callable[[dramatiq.MessageProxy, BaseException], None]

log = logging.getLogger(__name__)


class DeadLetterOnFinalFailure(Middleware):
    """Call an actor's ``dead_letter`` hook once its message has definitively failed.

    dramatiq's ``on_failure`` callback fires after every failed attempt, retried or not, so an
    event that went through on its second try would still leave a dead letter. ``Retries`` marks
    a message failed only when its retries are exhausted or the actor ``throws`` the exception;
    dramatiq calls ``after_*`` hooks in reverse order, so this middleware is placed before
    ``Retries`` to run after it and see its verdict.
    """

    @property
    def actor_options(self) -> set[str]:
        return {"dead_letter"}

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not message.failed:
            return
        hook: DeadLetterHook | None = broker.get_actor(message.actor_name).options.get(
            "dead_letter"
        )
        if hook is None:
            return
        try:
            hook(message, exception)
        except Exception as exc:
            # Not stored (the database is down, say): run the message again later, so that it
            # is either applied or stored then. dramatiq's own dead-letter queue is no place
            # to keep it: erasure cannot reach it, hence its short DEAD_MESSAGE_TTL_MS. Only the
            # type is logged: the error may quote the event, contacts included.
            log.error(
                "dead letter of message %s (%s) not stored (%s): run again in %d s",
                message.message_id,
                message.actor_name,
                type(exc).__name__,
                DEAD_LETTER_RETRY_MS // 1000,
            )
            broker.enqueue(message.copy(), delay=DEAD_LETTER_RETRY_MS)


class DurableRetries(Retries):
    """dramatiq's ``Retries``, except that a retry it cannot enqueue is not lost.

    ``Retries`` puts a failed message back on the queue from ``after_process_message``. When
    Redis is unreachable at that moment the enqueue raises, dramatiq only logs it, and once
    Redis is back it acknowledges the original message: a shop event that failed on its first
    try (say, the database restarting) disappears. Here the enqueue is tried again for about
    a minute; if Redis stays away the message is marked failed instead, so the dead-letter hook
    stores it in the database and dramatiq moves it to its dead-letter queue.
    """

    def __init__(
        self, *, enqueue_waits: Sequence[float] = (0.5, 1, 2, 4, 8, 15, 30), **options: Any
    ) -> None:
        super().__init__(**options)
        self.enqueue_waits = tuple(enqueue_waits)

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any | None = None,
        exception: BaseException | None = None,
    ) -> None:
        # The parent counts the attempt in the message's options before enqueueing; a failed
        # enqueue must not count it twice.
        options = dict(message.options)
        for wait in (*self.enqueue_waits, None):
            try:
                super().after_process_message(  # type: ignore[no-untyped-call]
                    broker, message, result=result, exception=exception
                )
                return
            except (
                redis.ConnectionError,
                redis.TimeoutError,
                dramatiq.BrokerConnectionError,
            ) as exc:
                message.options.clear()
                message.options.update(options)
                if wait is None:
                    break
                log.warning(
                    "retry of message %s not enqueued (%s), trying again in %.1f s",
                    message.message_id,
                    type(exc).__name__,
                    wait,
                )
                time.sleep(wait)
        log.error("retry of message %s not enqueued: dead-lettered", message.message_id)
        message.fail()


class FrozenStartupHeap(Middleware):
    """Freezes each worker process's heap once dramatiq has imported the actors into it
    (``wiring.heap``): the full collections of the garbage collector then skip it."""

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        freeze_startup_heap()


def middleware() -> list[Middleware]:
    """dramatiq's default middleware with ``Retries`` replaced by :class:`DurableRetries`."""
    return [DurableRetries() if m is Retries else m() for m in default_middleware]


def _make_broker() -> dramatiq.Broker:
    url = environ().get("NPS_BROKER_URL")
    broker: dramatiq.Broker
    if url:
        # A message taken by a worker that dies (OOM, SIGKILL, a lost machine) stays invisible
        # until dramatiq's maintenance hands it back, which happens only once the worker has
        # sent no heartbeat for `heartbeat_timeout` and then on a `maintenance_chance` in a
        # million per broker command. dramatiq's defaults (60 s, 0.1%) can leave a shop event
        # parked for many minutes on a quiet queue; 15 s and 2% bring it back typically within a
        # minute (maintenance hands back only the messages of the queue whose command ran it, so
        # each queue waits for one of its own fetches to draw it).
        # Workers heartbeat on every fetch (about once a second), so 15 s is far from a live
        # worker's silence. Handing a message back twice is safe: every actor is idempotent.
        broker = RedisBroker(  # type: ignore[no-untyped-call]
            url=url,
            middleware=middleware(),
            heartbeat_timeout=HEARTBEAT_TIMEOUT_MS,
            maintenance_chance=MAINTENANCE_CHANCE_PER_MILLION,
            dead_message_ttl=DEAD_MESSAGE_TTL_MS,
        )
    else:
        broker = StubBroker(middleware=middleware())
        broker.emit_after("process_boot")
    broker.add_middleware(DeadLetterOnFinalFailure(), before=Retries)
    # Every worker process dramatiq spawns sets up our logging on boot: one format, and queue
    # messages logged by actor and id, never with their arguments (which carry contacts).
    broker.add_middleware(LoggingMiddleware(), before=AgeLimit)
    if url:
        # Only dramatiq's CLI emits process_boot, in each worker process it starts (the
        # in-process broker emits it above, before any middleware of ours is added). Hooks run
        # in reverse order: placed first, the freeze runs last, once logging is set up.
        broker.add_middleware(FrozenStartupHeap(), before=LoggingMiddleware)
        broker.add_middleware(QueuePrefetch(EVENTS_QUEUE))
        broker.add_middleware(EventThreads(EVENTS_QUEUE))
    return broker


broker = _make_broker()
dramatiq.set_broker(broker)


def actor(queue_name: str, **options: Any) -> Callable[[F], dramatiq.Actor[Any, Any]]:
    """`dramatiq.actor` with the queue name pinned (the names are part of the contract)."""

    def decorate(fn: F) -> dramatiq.Actor[Any, Any]:
        return dramatiq.actor(queue_name=queue_name, broker=broker, **options)(fn)

    return decorate
