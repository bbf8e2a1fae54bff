"""A limit on how many threads of a process run a piece of work at once, safe to interrupt.

dramatiq stops a message that runs too long (its time limit) or a worker that shuts down by
raising an exception into the thread. ``threading``'s semaphores are Python code around a
``Condition``: such an exception landing inside ``acquire`` or ``release`` can leave its lock
held, and every later caller, blocked in C, waits for ever; a waiter interrupted after a release
chose it takes the wake-up with it, and the others sleep on.

:class:`Slots` keeps its state in one dict, by thread: a thread holds a slot while its entry is
there. The entry is added and removed by single statements under a lock taken with ``with``;
CPython delivers an exception raised into a thread only at a function's entry, a loop's jump
back or the return of a call, never between the C lock's acquire and the statements it guards.
No ``Condition`` is used (its ``wait`` releases and takes the lock again in Python code): a
thread finding every slot taken sleeps a short step outside the lock and looks again. The entry
is added inside the ``try`` whose ``finally`` removes it; an entry left all the same (an
exception inside that ``finally``) belongs to its thread, which uses it the next time it comes,
and is forgotten once that thread has ended. A thread holds one slot at a time: ``held`` is not
to be nested.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["Slots"]

#: Seconds between two looks at the slots while all are taken.
WAIT_STEP = 0.02


class Slots:
    """At most ``limit`` threads inside :meth:`held` at once; the others wait there."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._lock = threading.Lock()
        self._holders: dict[threading.Thread, bool] = {}

    @property
    def taken(self) -> int:
        with self._lock:
            return len(self._holders)

    def _take(self, me: threading.Thread) -> bool:
        with self._lock:
            if me not in self._holders and len(self._holders) >= self.limit:
                # Entries left by threads that have ended (see the module's docstring).
                self._holders = {t: True for t in self._holders if t.is_alive()}
            if me in self._holders or len(self._holders) < self.limit:
                self._holders[me] = True
                return True
            return False

    @contextmanager
    def held(self) -> Iterator[None]:
        """Wait for a slot, hold it for the ``with`` block, and free it whatever happens."""
        me = threading.current_thread()
        try:
            while not self._take(me):
                time.sleep(WAIT_STEP)
            yield
        finally:
            with self._lock:
                self._holders.pop(me, None)
