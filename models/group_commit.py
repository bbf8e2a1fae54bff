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

An exception raised into a thread (dramatiq's time limit or shutdown notice, delivered between
any two Python statements) leaves nothing waiting for ever: a thread interrupted before its item
is taken into a group takes the item away with it (once taken, the item is applied and the
thread leaves without waiting for the answer, as it would have without grouping); a leader
takes the waiting items all at once or not at all, and ends its group with one attribute store,
so a group it left half-way fails with :class:`GroupNotApplied`, an ordinary error, for every
other thread of it; the lock is taken and released in C code, except inside
``Condition.wait``, where an interrupt can surface as a ``RuntimeError`` about the lock (the
thread still leaves cleanly); every wait is bounded, so a notification lost with a leader costs
a delay only.

Each thread gets its own item's result, or the exception that failed its group, and returns only
once its group's call has returned, so a message is acknowledged or a request answered only
after what it carried is committed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Generic, TypeVar

__all__ = ["GroupCommit", "GroupNotApplied"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupNotApplied(RuntimeError):
    """The group's leader stopped (an exception raised into its thread) before every result
    was in: an ordinary failure, so each of the group's messages runs again."""


class _Group(Generic[Item, Result]):
    """A group being applied: when it started, its slots and, once over, its outcome.

    The outcome is published with single attribute stores (``results``, then ``error`` cleared
    or set, then ``over``): an exception raised into the leader between two statements cannot
    leave some of its slots answered and others waiting for ever."""

    __slots__ = ("error", "over", "results", "slots", "started")

    def __init__(self) -> None:
        self.slots: list[_Slot[Item, Result]] = []
        self.started = time.monotonic()
        self.results: Sequence[Result] = ()
        # Cleared only once every result is in: a group its leader left half-way (interrupted
        # while taking its slots, say) fails, and its messages run again.
        self.error: BaseException | None = GroupNotApplied("the group's leader stopped first")
        self.over = False


class _Slot(Generic[Item, Result]):
    __slots__ = ("group", "item")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.group: _Group[Item, Result] | None = None  # set when a group takes it

    @property
    def done(self) -> bool:
        return self.group is not None and self.group.over

    def outcome(self) -> Result:
        group = self.group
        if group is None or not group.over:
            raise RuntimeError("a slot's outcome was read before its group ended")
        if group.error is not None:
            raise group.error
        return group.results[group.slots.index(self)]


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
        if gather_for >= stall_after:
            # A gathering group would count as stalled: a second leader would take the items,
            # the gatherer's own among them, and leave it an empty group.
            raise ValueError("gather_for must be shorter than stall_after")
        self._apply = apply
        self._max_group = max_group
        self._stall_after = stall_after
        # Taken with ``with self._lock`` (C code): an exception raised into a thread cannot land
        # between taking and releasing it, as it could in Condition.__enter__/__exit__ (Python
        # code). Reentrant, because Condition.wait then restores it in C as well.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        # Only a gathering leader waits on this one: each item arriving while it gathers wakes it
        # alone, instead of every thread waiting on ``_changed`` (a herd of wake-ups per item that
        # cost a worker more CPU than the waiting it saved).
        self._arrived = threading.Condition(self._lock)
        self._waiting: list[_Slot[Item, Result]] = []
        self._groups: list[_Group[Item, Result]] = []  # being applied, oldest first
        self._gather_for = gather_for
        self._gathering = False  # a leader waits for the threads of the last group
        self._last_size = 1  # how many items the last group held

    @property
    def _running(self) -> int:
        """How many groups are being applied."""
        with self._lock:
            return len(self._live_groups())

    def _live_groups(self) -> list[_Group[Item, Result]]:
        # A group marked over has finished even if its leader was interrupted before taking
        # it off the list.
        self._groups = [group for group in self._groups if not group.over]
        return self._groups

    def submit(self, item: Item) -> Result:
        """Apply ``item`` in the next group; its result, or the exception of its group."""
        slot: _Slot[Item, Result] = _Slot(item)
        try:
            # Queued inside the try: an interrupt as it is queued takes it away again.
            with self._lock:
                self._waiting.append(slot)
                if self._gathering and self._gathered():
                    # Only the arrival that completes the gathering wakes the leader: waking it
                    # on each one cost a context switch per item for a check that fails. All
                    # waiters, though only the leader waits here: a leader interrupted inside
                    # Condition.wait can leave its waiter queued, and notify() would release
                    # that one instead of the live leader, which would then sleep out gather_for.
                    self._arrived.notify_all()
            while not slot.done:
                self._lead_or_wait(slot)
        except BaseException:
            # Interrupted before its group was taken (a time limit, a shutdown): the item
            # leaves with its thread, or a later group would apply it with nobody to answer.
            with self._lock:
                if slot.group is None and slot in self._waiting:
                    self._waiting.remove(slot)
            raise
        return slot.outcome()

    def _until_stalled(self) -> float:
        """Seconds until the latest group still running counts as stalled: 0 when it does or
        when none is running."""
        groups = self._live_groups()
        if not groups:
            return 0.0
        return max(0.0, groups[-1].started + self._stall_after - time.monotonic())

    def _take(self, group: _Group[Item, Result]) -> None:
        """Move the first waiting slots into ``group`` (under the lock).

        The slots are marked all at once, in C: ``map`` and ``setattr`` run no Python bytecode,
        where an exception raised into this thread could land, so either every slot taken
        belongs to the group (and is answered when it ends) or none does (and all stay queued
        for the next group). They leave the queue only after that."""
        # Slots a take interrupted after marking left queued: their group answers them.
        self._waiting[:] = [each for each in self._waiting if each.group is None]
        taken = self._waiting[: self._max_group]
        group.slots = taken
        deque(map(setattr, taken, repeat("group"), repeat(group)), maxlen=0)
        del self._waiting[: len(taken)]
        self._last_size = len(taken)

    def _lead_or_wait(self, slot: _Slot[Item, Result]) -> None:
        """Wait until ``slot`` is done, or lead the next group if it may start meanwhile."""
        group: _Group[Item, Result] | None = None
        try:
            with self._lock:
                while True:
                    if slot.done:
                        return
                    if slot.group is not None:
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
                self._take(group)
            if group.slots:
                results = list(self._apply([each.item for each in group.slots]))
                if len(results) != len(group.slots):
                    raise RuntimeError(
                        f"{len(results)} results for a group of {len(group.slots)} items"
                    )
                group.results = results
            group.error = None
        except BaseException as exc:
            if group is None:
                raise
            # A failure of the group is handed to every thread of it, which raises it. An
            # interrupt of this thread (a time limit, a shutdown) is this thread's own: the
            # others fail with the default GroupNotApplied, an ordinary error.
            interrupted = not isinstance(exc, Exception)
            if not interrupted:
                group.error = exc
            if interrupted or slot.group is None:
                # Nobody else raises it for this thread. (When this thread's own item is in
                # another group, the thread waits for that group's answer instead.)
                raise
        finally:
            if group is not None:
                # One store ends the group for all its threads, before the lock is taken: if
                # this thread is interrupted from here on, they still see it over at their next
                # bounded wait.
                group.over = True
                with self._lock:
                    if group in self._groups:
                        self._groups.remove(group)
                    self._changed.notify_all()

    def _gathered(self) -> bool:
        """As many items wait as the last group held (under the lock): what a gathering leader
        waits for, and what the arrival that brings it about wakes the leader for."""
        return len(self._waiting) >= self._last_size

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
            self._arrived.wait_for(self._gathered, timeout=self._gather_for)
        finally:
            self._gathering = False
