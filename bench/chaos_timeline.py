"""Timed actions for the chaos run: "at t, do this", run by a bounded pool of threads.

Every action of the simulated outside world (a shop event, a provider callback, a customer's
answer) is one entry. Actions are bounded too: each does one request with a timeout and, when it
must try again, schedules itself again with a bounded attempt count.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["Timeline"]

log = logging.getLogger(__name__)


class Timeline:
    def __init__(self, threads: int = 16) -> None:
        self._heap: list[tuple[float, int, Callable[..., Any], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="chaos-action")
        self._running = 0
        self._stopped = False
        self.errors: Counter[str] = Counter()
        self._thread = threading.Thread(target=self._loop, name="chaos-timeline", daemon=True)
        self._thread.start()

    def at(self, when: float, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` at monotonic time ``when`` (at once when it has passed)."""
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (when, next(self._seq), fn, args))
            self._cond.notify()

    def after(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:
        self.at(time.monotonic() + max(delay, 0.0), fn, *args)

    def pending(self) -> int:
        """Actions waiting or running."""
        with self._cond:
            return len(self._heap) + self._running

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else 1.0
                    self._cond.wait(timeout=min(max(wait, 0.0), 1.0))
                if self._stopped:
                    return
                _, _, fn, args = heapq.heappop(self._heap)
                self._running += 1
            self._pool.submit(self._run, fn, args)

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            fn(*args)
        except Exception as exc:
            with self._cond:
                self.errors[f"{getattr(fn, '__qualname__', fn)}: {type(exc).__name__}"] += 1
            log.debug("timeline action failed", exc_info=True)
        finally:
            with self._cond:
                self._running -= 1

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
