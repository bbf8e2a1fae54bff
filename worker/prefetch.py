"""How many messages of the events queue a worker process takes ahead from Redis.

A dramatiq worker process has one consumer thread per queue, which fetches messages into the
work queue its threads share, up to a limit of messages taken and not yet acknowledged (two per
thread by default). A consumer that finds its limit reached sleeps, 5-10 ms at first and twice
as long at each wake-up that finds it still reached (up to the worker timeout, a second), and
fetches replacements only when it wakes. Single shop events are applied in groups
(``ingest.grouped``): the threads of a group finish together and take the messages waiting at
once, and with two per thread the work queue was then empty until the consumer woke (under load,
about a hundred times a second per process, the threads waiting for messages). With
:data:`PREFETCH_PER_THREAD` per thread it still holds messages when a group ends.

The limit counts the process's regular threads (``--threads``: 64 with 8), also when the events
queue has threads of its own (``worker.event_threads``, 48 by default): their groups hold about
26 events, so 64 taken still leave messages waiting when a group ends, and a limit counted on
all 56 threads would hold seven times as many ``ingest_events`` batches decoded in memory. It
is never below the events queue's own threads, though, so that each can have a message, even
when the operator has set dramatiq's limit (:data:`PREFETCH_VARIABLE`) lower.

Only the events queue takes more: every queue's messages share one first-come work queue, so a
deeper sends queue would put alerts and events behind survey sends that wait for their rate
limit, and a short burst of sends would go to one process instead of being shared. The same
holds, to a lesser degree, for the events queue's ``ingest_events`` batches (up to 500 events
each, held decoded in memory while they wait): the README says when to set a lower limit.

A worker stopped by dramatiq hands the messages it has taken but not started back; a worker
killed, or stopped in a way that skips dramatiq's shutdown, leaves them to the broker's recovery
of a dead worker's messages (``worker.broker``), as it leaves the messages it was running.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import Middleware
from dramatiq.worker import ConsumerThread

from config.settings import SettingsError, environ, event_threads

__all__ = ["PREFETCH_PER_THREAD", "PREFETCH_VARIABLE", "QueuePrefetch"]

#: Messages of the events queue a worker process takes ahead, per thread (dramatiq's: 2).
PREFETCH_PER_THREAD = 8

#: dramatiq's own setting of every queue's limit, read from the environment when dramatiq is
#: imported; when it is set, it is left to apply as dramatiq reads it.
PREFETCH_VARIABLE = "dramatiq_queue_prefetch"


def operator_prefetch() -> int:
    """The limit set in :data:`PREFETCH_VARIABLE`; 0 when unset (as dramatiq reads it)."""
    return int(environ().get(PREFETCH_VARIABLE) or 0)


class QueuePrefetch(Middleware):
    """Let the consumer of ``queue_name`` take :data:`PREFETCH_PER_THREAD` messages per regular
    worker thread ahead, and at least one per thread of its own; see the module's docstring."""

    def __init__(self, queue_name: str) -> None:
        self.queue_name = queue_name
        self._limit = 0

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        try:
            own = event_threads()
        except SettingsError:
            own = 0  # the worker refuses to start (``worker.event_threads``)
        # The operator's setting, when there is one, replaces the eight a thread, not the floor.
        ahead = operator_prefetch() or worker.worker_threads * PREFETCH_PER_THREAD
        self._limit = max(ahead, own)

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread: ConsumerThread) -> None:
        # Called in the consumer thread before it starts consuming with ``thread.prefetch``.
        if thread.queue_name != self.queue_name or not self._limit:
            return
        thread.prefetch = self._limit
