"""Group commit: work handed in by concurrent threads, applied in shared transactions.

A worker process runs many threads, each holding one queue message or one HTTP request. Applying
each item in a transaction of its own pays the fixed costs (round trips, the commit's flush to
disk) once per item. :class:`GroupCommit` lets them share: the first thread to find nothing
being applied becomes the leader and applies every item waiting, its own included, with one
call; items that arrive meanwhile wait for the next group, which one of their threads leads.
Under light load a group holds one item and adds no delay; under heavy load groups grow to the
number of threads waiting. With ``gather_for``, a leader first waits (at most that long) until
as many items wait as the last group held: the threads of a group come back one by one with
their next item, and without it the first back would lead a group of one ahead of the others.
After a group of one nothing is waited for.

A group that takes longer than ``stall_after`` (its transaction waiting on a row lock that
another session holds, say) no longer holds the others back: the threads waiting then lead a
group of their own beside it, one more group per ``stall_after``, so one slow item delays only
the items of its own group, as it would delay only its own thread without grouping.

Each thread gets its own item's result, or the exception that failed its group, and returns only
once its group's call has returned, so a message is acknowledged or a request answered only
after what it carried is committed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result", "taken")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.taken = False  # in a group being applied
        self.done = False


class GroupCommit(Generic[Item, Result]):
    """Apply items from many threads in groups of at most ``max_group``.

    ``apply`` takes the items of a group in the order they arrived and returns one result per
    item, in the same order. While groups are being applied, the next one starts when they are
    done or when the latest of them has run for ``stall_after`` seconds.
    """

    def __init__(
        self,
        apply: Callable[[list[Item]], Sequence[Result]],
        max_group: int = 500,
        stall_after: float = 1.0,
        gather_for: float = 0.0,
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        if stall_after <= 0 or gather_for < 0:
            raise ValueError("stall_after must be positive and gather_for not negative")
        self._apply = apply
        self._max_group = max_group
        self._stall_after = stall_after
        self._changed = threading.Condition()
        self._waiting: list[_Slot[Item, Result]] = []
        self._running = 0  # groups being applied
        self._latest_start = 0.0  # time.monotonic() when the latest of them started
        self._gather_for = gather_for
        self._gathering = False  # a leader waits for the threads of the last group
        self._last_size = 1  # how many items the last group held

    def submit(self, item: Item) -> Result:
        """Apply ``item`` in the next group; its result, or the exception of its group."""
        slot: _Slot[Item, Result] = _Slot(item)
        with self._changed:
            self._waiting.append(slot)
            if self._gathering:
                self._changed.notify_all()
        while not slot.done:
            self._lead_or_wait(slot)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _may_lead(self) -> bool:
        return self._running == 0 or time.monotonic() - self._latest_start >= self._stall_after

    def _lead_or_wait(self, slot: _Slot[Item, Result]) -> None:
        """Wait until ``slot`` is done, or lead the next group if it may start meanwhile."""
        group: list[_Slot[Item, Result]] = []
        leading = False
        # One try from taking the group to marking it done: an exception raised into this
        # thread at any point in between (a time limit, a shutdown) cannot leave a group
        # counted as running, or its threads waiting, forever.
        try:
            with self._changed:
                ready = self._changed.wait_for(
                    lambda: slot.done or (not slot.taken and self._may_lead()),
                    timeout=self._stall_after,
                )
                if not ready or slot.done:
                    return
                self._running += 1
                leading = True
                self._latest_start = time.monotonic()
                if self._running == 1 and len(self._waiting) < self._last_size:
                    self._gather()
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                for taken in group:
                    taken.taken = True
                self._last_size = len(group)
            results = list(self._apply([taken.item for taken in group]))
            if len(results) != len(group):
                raise RuntimeError(f"{len(results)} results for a group of {len(group)} items")
            for taken, result in zip(group, results, strict=True):
                taken.result = result
        except BaseException as exc:  # handed to every thread of the group, which raises it
            for taken in group:
                taken.error = exc
            if not group:
                raise
        finally:
            if leading:
                with self._changed:
                    for taken in group:
                        taken.done = True
                    self._running -= 1
                    self._changed.notify_all()

    def _gather(self) -> None:
        """Wait, at most ``gather_for``, until as many items wait as the last group held.

        The threads of the group just applied come back one by one with their next item; the
        first to arrive would otherwise lead a group of one while the others queue behind it
        for the next, so groups would alternate between one item and the rest. Under light load
        the last group held one item and nothing is waited for."""
        if self._gather_for <= 0:
            return
        self._gathering = True
        try:
            self._changed.wait_for(
                lambda: len(self._waiting) >= self._last_size, timeout=self._gather_for
            )
        finally:
            self._gathering = False
