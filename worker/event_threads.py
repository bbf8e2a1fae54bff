"""Threads of their own for the events queue, beside the threads every queue shares.

A dramatiq worker process runs one pool of threads (``--threads``) fed by one work queue that
every queue's consumer fills. Single shop events are applied in groups (``ingest.grouped``): a
thread hands its event in and waits until the group holding it has committed, and one group is
applied at a time. With 8 threads, all 8 wait inside the group being applied, so no thread
prepares the next one meanwhile and the process sits partly idle. More threads for every queue
would keep it busy, but the sends queue does not gain from them (its threads wait on the
provider, and more of them only contend for the two cores).

:class:`EventThreads` gives the events queue ``N`` threads of its own: its consumer fills a work
queue of its own, which only those threads serve, while the other queues keep the regular
threads. ``nps-dispatch worker --event-threads N`` passes ``N`` to dramatiq's worker processes
in an environment variable (``config.settings``); unset or 0, the events queue shares the regular
threads as dramatiq has it (a ``dramatiq`` command run by hand, the in-process worker of the
demo and the tests).

The threads are dramatiq's own ``WorkerThread`` and are added to the worker's list of threads,
so pausing, stopping and joining on shutdown cover them. dramatiq's shutdown hands back to Redis
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
from dramatiq.errors import BrokerConnectionError
from dramatiq.middleware import Middleware
from dramatiq.worker import ConsumerThread, WorkerThread

from config.settings import event_threads

__all__ = ["EventThreads"]

log = logging.getLogger(__name__)


class _OwnThreads:
    """One worker's threads for the events queue, the work queue they serve and, once it has
    booted, the consumer that fills it."""

    def __init__(self, worker: dramatiq.Worker, count: int) -> None:
        self.worker = worker
        self.count = count
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
        self._by_worker: dict[int, _OwnThreads] = {}

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        count = event_threads()
        if count:
            with self._lock:
                self._by_worker[id(worker)] = _OwnThreads(worker, count)

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

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # By now the worker has created its consumers (one per declared queue, unless it was
        # told to consume some queues only), though a consumer may not have booted yet.
        with self._lock:
            own = self._by_worker.get(id(worker))
            if own is not None and self.queue_name not in worker.consumers:
                del self._by_worker[id(worker)]
                own = None
        if own is None:
            return
        for _ in range(own.count):
            thread = WorkerThread(
                broker=broker,
                consumers=worker.consumers,
                work_queue=own.work_queue,
                worker_timeout=worker.worker_timeout,
            )
            thread.start()
            worker.workers.append(thread)

    def before_consumer_thread_shutdown(
        self, broker: dramatiq.Broker, thread: ConsumerThread
    ) -> None:
        # dramatiq stops and joins every worker thread, then the consumers: each consumer calls
        # this on its way out, still connected, with no thread left to take from its queue.
        with self._lock:
            own = next((o for o in self._by_worker.values() if o.consumer is thread), None)
        if own is None:
            return
        messages = []
        while not own.work_queue.empty():
            messages.append(own.work_queue.get_nowait().message)
            own.work_queue.task_done()
        if not messages:
            return
        try:
            thread.requeue_messages(messages)
        except BrokerConnectionError:
            log.warning(
                "%d message(s) of queue %r not handed back: the broker recovers them later",
                len(messages),
                self.queue_name,
            )

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        with self._lock:
            self._by_worker.pop(id(worker), None)

    def join(self, worker: dramatiq.Worker) -> None:
        """Wait until the events queue's own threads have run every message they were given
        (dramatiq's ``Worker.join`` waits on the shared work queue only)."""
        with self._lock:
            own = self._by_worker.get(id(worker))
        if own is not None:
            own.work_queue.join()
