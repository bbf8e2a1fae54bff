"""Group commit: work handed in by concurrent threads, applied in shared transactions.

A worker process runs many threads, each holding one queue message or one HTTP request. Applying
each item in a transaction of its own pays the fixed costs (round trips, the commit's flush to
disk) once per item. :class:`GroupCommit` lets them share: the first thread to find nothing
being applied becomes the leader and applies every item waiting, its own included, with one
call; items that arrive meanwhile wait for the next group, which one of their threads leads.
There is no timer: under light load a group holds one item and adds no delay, under heavy load
groups grow to the number of threads waiting.

Each thread gets its own item's result, or the exception that failed its group, and returns only
once its group's call has returned, so a message is acknowledged or a request answered only
after what it carried is committed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Slot(Generic[Item, Result]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit(Generic[Item, Result]):
    """Apply items from many threads in groups of at most ``max_group``.

    ``apply`` takes the items of a group in the order they arrived and returns one result per
    item, in the same order.
    """

    def __init__(
        self, apply: Callable[[list[Item]], Sequence[Result]], max_group: int = 500
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._apply = apply
        self._max_group = max_group
        self._changed = threading.Condition()
        self._waiting: list[_Slot[Item, Result]] = []
        self._leading = False

    def submit(self, item: Item) -> Result:
        """Apply ``item`` in the next group; its result, or the exception of its group."""
        slot: _Slot[Item, Result] = _Slot(item)
        with self._changed:
            self._waiting.append(slot)
        while True:
            with self._changed:
                self._changed.wait_for(lambda: slot.done or not self._leading)
                if slot.done:
                    break
                self._leading = True
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
            self._lead(group)
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    def _lead(self, group: list[_Slot[Item, Result]]) -> None:
        try:
            results = list(self._apply([slot.item for slot in group]))
            if len(results) != len(group):
                raise RuntimeError(f"{len(results)} results for a group of {len(group)} items")
            for slot, result in zip(group, results, strict=True):
                slot.result = result
        except BaseException as exc:  # handed to every thread of the group, which raises it
            for slot in group:
                slot.error = exc
        finally:
            with self._changed:
                for slot in group:
                    slot.done = True
                self._leading = False
                self._changed.notify_all()
