"""A limit on how many threads of a process run a piece of work at once, safe to interrupt.

dramatiq stops a message that runs too long (its time limit) or a worker that shuts down by
raising an exception into the thread, between any two Python statements. ``threading``'s
semaphores are Python code around a ``Condition``: an exception landing inside ``acquire`` or
``release`` can leave its lock held, and every later caller, blocked in C, waits for ever; a
waiter interrupted after a release chose it takes the wake-up with it, and the others sleep on.

:class:`Slots` keeps its state in one dict, by thread: a thread holds a slot while its entry
is there, and it is added and removed by single statements under a lock taken with ``with``
(C code, which an exception cannot land inside). Inside ``Condition.wait``, which releases and
takes the lock again in Python code, an interrupt can surface as a ``RuntimeError`` about the
lock instead: the thread leaves without a slot and its message fails (and runs again), as the
interrupt would have made it. Every wait is bounded, so a wake-up lost costs a short delay.
The entry is added inside the ``try`` whose ``finally`` removes it; should an
exception land inside that ``finally`` all the same, the entry stays with its thread, which
finds it there (and uses it) the next time it comes for a slot; a thread that has ended by then
loses its entry when the slots are next found all taken.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Slots"]

#: Seconds between two looks at the slots while all are taken.
WAIT_STEP = 0.1


class Slots:
    """At most ``limit`` threads inside :meth:`held` at once; the others wait there."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._lock = threading.RLock()
        self._freed = threading.Condition(self._lock)
        self._holders: dict[int, bool] = {}

    @property
    def taken(self) -> int:
        with self._lock:
            return len(self._holders)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Wait for a slot, hold it for the ``with`` block, and free it whatever happens."""
        me = threading.get_ident()
        try:
            with self._lock:
                while me not in self._holders and len(self._holders) >= self.limit:
                    self._forget_ended_threads()
                    if len(self._holders) < self.limit:
                        break
                    self._freed.wait(WAIT_STEP)
                self._holders[me] = True
            yield
        finally:
            with self._lock:
                if self._holders.pop(me, False):
                    self._freed.notify()

    def _forget_ended_threads(self) -> None:
        # Under the lock. Rebuilt and stored in one statement, as everywhere else here.
        alive = {thread.ident for thread in threading.enumerate()}
        self._holders = {ident: True for ident in self._holders if ident in alive}
