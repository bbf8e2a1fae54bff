"""Requests that share one transaction: the status callbacks of concurrent requests, stored
together (group commit on the event loop).

Each request hands its item to :meth:`AsyncGroups.submit` and awaits its own result. When no
group is being applied, the items waiting go at once, as one group, to one worker thread (one
call of ``apply``, one transaction); items arriving meanwhile wait for the next group, which
starts as soon as that call returns. Under light load a group holds one item and adds no delay,
under heavy load groups grow to the number of requests waiting, and the event loop hands work to
a thread once per group instead of once per request.

A group that takes longer than ``stall_after`` (its transaction waiting on a lock, a database
slow to answer) does not hold the others back: the requests waiting behind it then go as a group
of their own, and later ones follow as usual. At most ``max_running`` groups are applied at once,
counted by a capacity limiter of their own (not the tokens of the thread pool the other routes
use): when the database itself stalls, the callbacks wait, and the rest of the process keeps its
threads and connections. A group's thread cannot be stopped: a task cancelled while its group
runs (the server stopping) waits for that thread before it ends, so the bound holds then too.

A request is answered only once its group's call has returned: with its item's result, or with
the exception that failed the group (every request of that group gets it, and no other). A
request whose client went away does not cancel its group.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from anyio import CapacityLimiter, to_thread

__all__ = ["AsyncGroups"]

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Running:
    """A group being applied, and whether it has run for ``stall_after`` (marked by a timer,
    so an early timer or a busy loop cannot make it look otherwise)."""

    __slots__ = ("stalled",)

    def __init__(self) -> None:
        self.stalled = False


class _Queue(Generic[Item, Result]):
    """The items of one event loop waiting for a group, and the groups being applied."""

    __slots__ = ("limiter", "running", "starting", "tasks", "waiting")

    def __init__(self, max_running: int) -> None:
        self.waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        # Held: the loop keeps only a weak reference to a task.
        self.tasks: set[asyncio.Task[None]] = set()
        self.running: list[_Running] = []  # in the order they started
        # A task started that has not yet taken the waiting items (until it runs or is done).
        self.starting: asyncio.Task[None] | None = None
        self.limiter = CapacityLimiter(max_running)  # made on the loop that uses it


class AsyncGroups(Generic[Item, Result]):
    """Apply items submitted by concurrent requests in groups of at most ``max_group``.

    ``apply`` runs in a worker thread; it takes the items of a group in the order they arrived
    and returns one result per item, in the same order. The next group starts when the running
    ones are done, or when the latest of them has run for ``stall_after`` seconds and fewer
    than ``max_running`` are being applied.
    """

    def __init__(
        self,
        apply: Callable[[list[Item]], Sequence[Result]],
        max_group: int = 256,
        stall_after: float = 1.0,
        max_running: int = 4,
    ) -> None:
        if max_group < 1 or max_running < 1:
            raise ValueError("max_group and max_running must be at least 1")
        if stall_after <= 0:
            raise ValueError("stall_after must be positive")
        self._apply = apply
        self._max_group = max_group
        self._stall_after = stall_after
        self._max_running = max_running
        # One queue per event loop (a test client may run each request on a loop of its own).
        self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Queue[Item, Result]] = (
            weakref.WeakKeyDictionary()
        )

    async def submit(self, item: Item) -> Result:
        """Apply ``item`` in the next group; its result, or the exception of its group."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue(self._max_running)
        future: asyncio.Future[Result] = loop.create_future()
        queue.waiting.append((item, future))
        if not _live(queue) or self._stalled(queue):
            self._start(loop, queue)
        # Shielded: a request cancelled meanwhile (its client went away) leaves its group whole.
        return await asyncio.shield(future)

    def _stalled(self, queue: _Queue[Item, Result]) -> bool:
        """Whether the waiting items should go to a task of their own: no task is about to take
        them (a task between groups takes them without yielding), fewer than ``max_running``
        groups are applied, and the latest has run for ``stall_after``."""
        if queue.starting is not None and not queue.starting.done():
            return False
        running = queue.running
        if not running or len(running) < _live(queue) or len(running) >= self._max_running:
            return False
        return running[-1].stalled

    def _start(self, loop: asyncio.AbstractEventLoop, queue: _Queue[Item, Result]) -> None:
        # A context of its own: not the one of the request that happened to start it (its
        # request id would tag the log lines of every group the task applies).
        task = loop.create_task(self._run(loop, queue), context=contextvars.Context())
        queue.starting = task
        queue.tasks.add(task)
        task.add_done_callback(lambda done: self._finished(queue, done))

    def _check(
        self, loop: asyncio.AbstractEventLoop, queue: _Queue[Item, Result], running: _Running
    ) -> None:
        """Called ``stall_after`` after a group started: marks it stalled, and sends the items
        waiting behind it, if any, to a task of their own."""
        running.stalled = True
        if queue.waiting and self._stalled(queue):
            self._start(loop, queue)

    def _finished(self, queue: _Queue[Item, Result], task: asyncio.Task[None]) -> None:
        queue.tasks.discard(task)
        if queue.starting is task:
            queue.starting = None
        if not _live(queue):
            # Cancelled (the server is stopping), perhaps before it ever ran: nothing is left
            # to apply what waits, so it is answered now rather than never.
            _fail_waiting(queue)

    async def _run(self, loop: asyncio.AbstractEventLoop, queue: _Queue[Item, Result]) -> None:
        current = asyncio.current_task()
        if queue.starting is current:
            queue.starting = None
        try:
            while queue.waiting:
                group = queue.waiting[: self._max_group]
                del queue.waiting[: self._max_group]
                running = _Running()
                queue.running.append(running)
                timer = loop.call_later(self._stall_after, self._check, loop, queue, running)
                try:
                    results = list(await _applied(self._apply, [i for i, _f in group], queue))
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
                finally:
                    timer.cancel()
                    queue.running.remove(running)
                for (_item, future), result in zip(group, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            # Off the list now, not when the loop runs the done callback: a submit in between
            # would otherwise count on this task to take its item.
            queue.tasks.discard(current)
            if not _live(queue):
                _fail_waiting(queue)  # only when this task itself was cancelled


def _live(queue: _Queue[Any, Any]) -> int:
    """The tasks not yet done: one cancelled before it ever ran stays in ``tasks`` until its
    done callback, a loop step later, and must not count."""
    return sum(1 for task in queue.tasks if not task.done())


async def _applied(
    apply: Callable[[list[Item]], Sequence[Result]], items: list[Item], queue: _Queue[Any, Any]
) -> Sequence[Result]:
    """``apply(items)`` in a thread, counted by the queue's limiter. Cancelled meanwhile, it
    waits for the thread (which cannot be stopped, and holds a connection) before the
    cancellation goes on."""
    work = asyncio.ensure_future(to_thread.run_sync(apply, items, limiter=queue.limiter))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait([work])
        raise


def _fail_waiting(queue: _Queue[Any, Any]) -> None:
    for _item, future in queue.waiting:
        if not future.done():
            future.set_exception(RuntimeError("the group's task was cancelled"))
    queue.waiting.clear()
