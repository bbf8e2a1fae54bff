"""Requests that share one transaction: the status callbacks of concurrent requests, stored
together (group commit on the event loop).

Each request hands its item to :meth:`AsyncGroups.submit` and awaits its own result. When no
group is being applied, the items waiting go at once, as one group, to one worker thread (one
call of ``apply``, one transaction); items arriving meanwhile wait for the next group, which
starts as soon as that call returns. There is no timer: under light load a group holds one item
and adds no delay, under heavy load groups grow to the number of requests waiting, and the
event loop hands work to a thread once per group instead of once per request.

A request is answered only once its group's call has returned: with its item's result, or with
the exception that failed the group (every request of that group gets it, and no other). A
request whose client went away does not cancel its group.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from fastapi.concurrency import run_in_threadpool

__all__ = ["AsyncGroups"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Queue(Generic[Item, Result]):
    """The items of one event loop waiting for a group, and whether a group is running."""

    __slots__ = ("running", "task", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self.running = False
        self.task: asyncio.Task[None] | None = None  # held: the loop keeps only a weak one


class AsyncGroups(Generic[Item, Result]):
    """Apply items submitted by concurrent requests in groups of at most ``max_group``.

    ``apply`` runs in a worker thread; it takes the items of a group in the order they arrived
    and returns one result per item, in the same order.
    """

    def __init__(
        self, apply: Callable[[list[Item]], Sequence[Result]], max_group: int = 256
    ) -> None:
        if max_group < 1:
            raise ValueError("max_group must be at least 1")
        self._apply = apply
        self._max_group = max_group
        # One queue per event loop (a test client may run each request on a loop of its own).
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[Item, Result]] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, item: Item) -> Result:
        """Apply ``item`` in the next group; its result, or the exception of its group."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future: asyncio.Future[Result] = loop.create_future()
        queue.waiting.append((item, future))
        if not queue.running:
            queue.running = True
            queue.task = loop.create_task(self._run(queue))
        # Shielded: a request cancelled meanwhile (its client went away) leaves its group whole.
        return await asyncio.shield(future)

    async def _run(self, queue: _Queue[Item, Result]) -> None:
        try:
            while queue.waiting:
                group = queue.waiting[: self._max_group]
                del queue.waiting[: self._max_group]
                try:
                    results = list(await run_in_threadpool(self._apply, [i for i, _f in group]))
                    if len(results) != len(group):
                        raise RuntimeError(f"{len(results)} results for {len(group)} items")
                except BaseException as exc:  # handed to every request of the group
                    for _item, future in group:
                        if future.done():
                            continue
                        if isinstance(exc, Exception):
                            future.set_exception(exc)
                        else:
                            future.cancel()
                    if not isinstance(exc, Exception):
                        raise  # this task was cancelled: the server is stopping
                    continue
                for (_item, future), result in zip(group, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            queue.running = False
            queue.task = None
            for _item, future in queue.waiting:  # only when this task itself was cancelled
                if not future.done():
                    future.set_exception(RuntimeError("the group's task was cancelled"))
            queue.waiting.clear()
