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
another session holds, say) does not hold the others back: once the latest group still running
has run that long, the next starts beside it, and the groups after that one start as usual
while the stuck one waits. One slow item delays only the items of its own group, as it would
delay only its own thread without grouping.

An exception raised into a thread (a time limit, a shutdown) leaves nothing waiting for ever: a
waiting thread takes its item away with it, and a leader marks its group done before anything
that could be interrupted; every wait is bounded, so a notification lost with a leader costs a
delay only.

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


class _Group(Generic[Item, Result]):
    """A group being applied: when it started and its slots."""

    __slots__ = ("over", "slots", "started")

    def __init__(self) -> None:
        self.slots: list[_Slot[Item, Result]] = []
        self.started = time.monotonic()
        self.over = False  # its slots are marked done


class GroupCommit(Generic[Item, Result]):
    """Apply items from many threads in groups of at most ``max_group``.

    ``apply`` takes the items of a group in the order they arrived and returns one result per
    item, in the same order. While groups are being applied, the next one starts when they are
    done or when the latest of those still running has run for ``stall_after`` seconds.
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
        lock = threading.Lock()
        self._changed = threading.Condition(lock)
        # Only a gathering leader waits on this one: each item arriving while it gathers wakes it
        # alone, instead of every thread waiting on ``_changed`` (a herd of wake-ups per item that
        # cost a worker more CPU than the waiting it saved).
        self._arrived = threading.Condition(lock)
        self._waiting: list[_Slot[Item, Result]] = []
        self._groups: list[_Group[Item, Result]] = []  # being applied, oldest first
        self._gather_for = gather_for
        self._gathering = False  # a leader waits for the threads of the last group
        self._last_size = 1  # how many items the last group held

    @property
    def _running(self) -> int:
        """How many groups are being applied."""
        with self._changed:
            return len(self._live_groups())

    def _live_groups(self) -> list[_Group[Item, Result]]:
        # A group marked over has finished even if its leader was interrupted before taking
        # it off the list.
        self._groups = [group for group in self._groups if not group.over]
        return self._groups

    def submit(self, item: Item) -> Result:
        """Apply ``item`` in the next group; its result, or the exception of its group."""
        slot: _Slot[Item, Result] = _Slot(item)
        with self._changed:
            self._waiting.append(slot)
            if self._gathering:
                self._arrived.notify()
        try:
            while not slot.done:
                self._lead_or_wait(slot)
        except BaseException:
            # Interrupted before its group was taken (a time limit, a shutdown): the item
            # leaves with its thread, or a later group would apply it with nobody to answer.
            with self._changed:
                if not slot.taken and slot in self._waiting:
                    self._waiting.remove(slot)
            raise
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _until_stalled(self) -> float:
        """Seconds until the latest group still running counts as stalled: 0 when it does or
        when none is running."""
        groups = self._live_groups()
        if not groups:
            return 0.0
        return max(0.0, groups[-1].started + self._stall_after - time.monotonic())

    def _lead_or_wait(self, slot: _Slot[Item, Result]) -> None:
        """Wait until ``slot`` is done, or lead the next group if it may start meanwhile."""
        group: _Group[Item, Result] | None = None
        try:
            with self._changed:
                while True:
                    if slot.done:
                        return
                    if slot.taken:
                        # Bounded: a notification missed because its leader was interrupted
                        # costs a delay, never a thread waiting for ever.
                        self._changed.wait(self._stall_after)
                        continue
                    remaining = self._until_stalled()
                    if remaining == 0.0:
                        break
                    self._changed.wait(remaining)
                group = _Group()
                self._groups.append(group)
                if len(self._groups) == 1 and len(self._waiting) < self._last_size:
                    self._gather()
                taken = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                for each in taken:
                    each.taken = True
                group.slots = taken
                self._last_size = len(taken)
            results = list(self._apply([each.item for each in group.slots]))
            if len(results) != len(group.slots):
                raise RuntimeError(
                    f"{len(results)} results for a group of {len(group.slots)} items"
                )
            for each, result in zip(group.slots, results, strict=True):
                each.result = result
        except BaseException as exc:  # handed to every thread of the group, which raises it
            if group is None or not group.slots:
                raise
            for each in group.slots:
                each.error = exc
        finally:
            if group is not None:
                # Marked done before the lock is taken: if this thread is interrupted from
                # here on, the group's threads still see it done at their next bounded wait.
                for each in group.slots:
                    each.done = True
                group.over = True
                with self._changed:
                    if group in self._groups:
                        self._groups.remove(group)
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
            self._arrived.wait_for(
                lambda: len(self._waiting) >= self._last_size, timeout=self._gather_for
            )
        finally:
            self._gathering = False
