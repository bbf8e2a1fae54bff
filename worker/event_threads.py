"""Threads of their own for the events queue, beside the threads every queue shares.

A dramatiq worker process runs one pool of threads (``--threads``) fed by one work queue that
every queue's consumer fills. Single shop events are applied in groups (``ingest.grouped``): a
thread hands its event in and waits until the group holding it has committed, and one group is
applied at a time. With 8 threads, all 8 waited inside the group being applied, so no thread
prepared the next one meanwhile and the process sat partly idle; and a group's fixed cost (its
statements and commit) was shared by at most 8 events. More threads for every queue would help
the events but not the sends, which wait on their provider: with 16 threads for every queue,
sends fell to 0.71 of processes x threads / provider latency, against 0.85 with 8.

:class:`EventThreads` gives the events queue ``N`` threads of its own: its consumer fills a work
queue of its own, which only those threads serve, while the other queues keep the regular
threads. ``nps-dispatch worker --event-threads N`` passes ``N`` to dramatiq's worker processes
in an environment variable (``config.settings``); unset or 0, the events queue shares the
regular threads as dramatiq has it (a ``dramatiq`` command run by hand). Only the Redis broker
has this middleware: the demo's in-process broker, and the tests', keep dramatiq's single pool.

The threads are dramatiq's own ``WorkerThread``, started before the worker creates its consumers
(a worker that cannot start them does not start) and added to the worker's list of threads, so
pausing, stopping and joining on shutdown cover them. dramatiq's shutdown hands back to Redis
only the messages left in its own work queue; the ones left in the events queue's are handed
back here, once the threads are stopped and before the consumer closes. A message handed back
in neither way (the worker killed, Redis unreachable at that moment) is recovered by the
broker as any unacknowledged message of a dead worker (``worker.broker``).
"""

from __future__ import annotations

import logging
import threading
from queue import PriorityQueue
from typing import Any

import dramatiq
import redis
from dramatiq.common import iter_queue, q_name
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Middleware, MiddlewareError
from dramatiq.worker import ConsumerThread, WorkerThread

from config.settings import SettingsError, event_threads

__all__ = ["EventThreads", "EventThreadsNotStarted"]

log = logging.getLogger(__name__)


class EventThreadsNotStarted(MiddlewareError):
    """The events queue's own threads could not be set up: the worker does not start (dramatiq
    stops at this error instead of logging it and going on without them)."""


class _OwnThreads:
    """One worker's threads for the events queue, the work queue they serve and, once it has
    booted, the consumer that fills it."""

    def __init__(self, worker: dramatiq.Worker) -> None:
        self.worker = worker
        self.work_queue: PriorityQueue[Any] = PriorityQueue()
        self.consumer: ConsumerThread | None = None


class EventThreads(Middleware):
    """Serve ``queue_name`` with threads of its own in each worker; see the module's docstring."""

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        # By worker: a process may run more than one (the tests do), each with its consumers,
        # and a message is acknowledged through the consumer that took it. The hooks run in the
        # worker's thread and in its consumers' threads.
        self._lock = threading.Lock()
        self._by_worker: dict[dramatiq.Worker, _OwnThreads] = {}

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Before the worker creates its consumers: once the events consumer runs, threads are
        # there to take what it fetches, or the worker has not started at all.
        try:
            count = event_threads()
        except SettingsError as exc:
            raise EventThreadsNotStarted(str(exc)) from None
        whitelist = worker.consumer_whitelist
        if not count or (whitelist and q_name(self.queue_name) not in whitelist):
            return
        own = _OwnThreads(worker)
        with self._lock:
            self._by_worker[worker] = own
        started: list[WorkerThread] = []
        try:
            for _ in range(count):
                thread = WorkerThread(
                    broker=broker,
                    # The worker's own dict, which its consumers join as they are created.
                    consumers=worker.consumers,
                    work_queue=own.work_queue,
                    worker_timeout=worker.worker_timeout,
                )
                thread.start()
                started.append(thread)
        except RuntimeError as exc:  # "can't start new thread": a process or memory limit
            for thread in started:
                thread.stop()
            with self._lock:
                del self._by_worker[worker]
            raise EventThreadsNotStarted(f"events queue threads: {exc}") from None
        worker.workers.extend(started)

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread: ConsumerThread) -> None:
        # Called in the consumer's thread before it takes any message. The worker has put it
        # among its consumers before starting it, which tells whose consumer it is.
        if thread.queue_name != self.queue_name:
            return
        with self._lock:
            for own in self._by_worker.values():
                if own.worker.consumers.get(self.queue_name) is thread:
                    own.consumer = thread
                    thread.work_queue = own.work_queue

    def before_consumer_thread_shutdown(
        self, broker: dramatiq.Broker, thread: ConsumerThread
    ) -> None:
        # dramatiq stops and joins the worker threads, then the consumers: each consumer calls
        # this on its way out, still connected. (A thread that outlived the join's timeout may
        # still take a message meanwhile; what it takes, it runs.)
        with self._lock:
            owner = next((w for w, o in self._by_worker.items() if o.consumer is thread), None)
            own = self._by_worker.pop(owner) if owner is not None else None
        if own is None:
            return
        messages = [item.message for item in iter_queue(own.work_queue)]  # type: ignore[no-untyped-call]
        if not messages:
            return
        try:
            thread.requeue_messages(messages)
        except (BrokerConnectionError, redis.RedisError) as exc:
            log.warning(
                "%d message(s) of queue %r not handed back (%s): the broker recovers them "
                "once this worker's heartbeat has stopped",
                len(messages),
                self.queue_name,
                type(exc).__name__,
            )

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Normally gone already, with its consumer's hand-back; a consumer that outlived the
        # worker's join hands back on its way out, and finds its entry then.
        with self._lock:
            own = self._by_worker.get(worker)
            if own is not None and (own.consumer is None or not own.consumer.is_alive()):
                del self._by_worker[worker]

    def join(self, worker: dramatiq.Worker) -> None:
        """Wait until the events queue's own threads have run every message they were given
        (dramatiq's ``Worker.join`` waits on the shared work queue only)."""
        with self._lock:
            own = self._by_worker.get(worker)
        if own is not None:
            own.work_queue.join()
