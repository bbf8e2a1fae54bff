"""web.webhook_groups: requests waiting while a group is applied share the next group, each
gets its own result, a failure reaches every request of its group and no other, and a group that
stalls does not hold back the requests behind it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from web.webhook_groups import AsyncGroups


def test_a_lone_request_is_applied_at_once_in_a_group_of_its_own() -> None:
    groups: list[list[int]] = []

    def apply(items: list[int]) -> list[int]:
        groups.append(items)
        return [item * 10 for item in items]

    committer: AsyncGroups[int, int] = AsyncGroups(apply)

    async def scenario() -> list[int]:
        return [await committer.submit(1), await committer.submit(2)]

    assert asyncio.run(scenario()) == [10, 20]
    assert groups == [[1], [2]]


def test_requests_arriving_while_a_group_is_applied_share_the_next_one() -> None:
    release = threading.Event()
    groups: list[list[int]] = []

    def apply(items: list[int]) -> list[str]:
        groups.append(list(items))
        if items == [0]:
            assert release.wait(10)
        return [f"done {item}" for item in items]

    committer: AsyncGroups[int, str] = AsyncGroups(apply)

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(committer.submit(0))
        await asyncio.sleep(0.05)  # the first group is running in its thread
        rest = [asyncio.ensure_future(committer.submit(i)) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        release.set()
        return [await first, *[await r for r in rest]]

    assert asyncio.run(scenario()) == [f"done {i}" for i in range(6)]
    assert groups == [[0], [1, 2, 3, 4, 5]]


def test_a_failed_group_fails_each_of_its_requests_and_no_other() -> None:
    release = threading.Event()

    def apply(items: list[int]) -> list[int]:
        if items == [0]:
            assert release.wait(10)
            return items
        if 3 in items:
            raise RuntimeError("the transaction failed")
        return items

    committer: AsyncGroups[int, int] = AsyncGroups(apply, max_group=2)

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(committer.submit(0))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(committer.submit(i)) for i in (1, 2, 3, 4)]
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(first, *rest, return_exceptions=True))

    outcomes = asyncio.run(scenario())
    # Groups of at most two, in arrival order: [0], [1, 2], [3, 4]; the last one failed.
    assert outcomes[:3] == [0, 1, 2]
    assert all(isinstance(o, RuntimeError) for o in outcomes[3:])


def test_a_group_size_below_one_or_a_stall_time_not_above_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        AsyncGroups(lambda items: items, max_group=0)
    with pytest.raises(ValueError):
        AsyncGroups(lambda items: items, stall_after=0)
    with pytest.raises(ValueError):
        AsyncGroups(lambda items: items, max_running=0)


class _Stuck:
    """``apply`` whose groups holding a negative item wait until released (a transaction
    waiting on a lock); ``entered`` is set once such a group is inside ``apply``."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.groups: list[list[int]] = []

    def __call__(self, items: list[int]) -> list[int]:
        self.groups.append(list(items))
        if any(item <= 0 for item in items):
            self.entered.set()
            assert self.release.wait(10)
        return [item * 10 for item in items]

    async def until_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10)


def test_requests_waiting_behind_a_stalled_group_go_in_a_group_of_their_own() -> None:
    stuck = _Stuck()
    committer: AsyncGroups[int, int] = AsyncGroups(stuck, stall_after=0.05)

    async def scenario() -> tuple[list[int], bool, int]:
        first = asyncio.ensure_future(committer.submit(0))
        try:
            await stuck.until_entered()
            behind = [asyncio.ensure_future(committer.submit(i)) for i in (1, 2)]
            # Answered while the first group is still stuck: the stall sent them on.
            answered = await asyncio.wait_for(asyncio.gather(*behind), timeout=5)
            still_stuck = not first.done()
        finally:
            stuck.release.set()
        return answered, still_stuck, await first

    assert asyncio.run(scenario()) == ([10, 20], True, 0)
    assert stuck.groups == [[0], [1, 2]]


def test_a_request_arriving_after_the_stall_goes_at_once() -> None:
    stuck = _Stuck()
    committer: AsyncGroups[int, int] = AsyncGroups(stuck, stall_after=0.05)

    async def scenario() -> tuple[int, int, int]:
        first = asyncio.ensure_future(committer.submit(0))
        try:
            await asyncio.sleep(0.2)  # stalled, with nothing waiting behind it
            second = await asyncio.wait_for(committer.submit(1), timeout=5)
            # The stuck group's task is still there; a later request does not wait for it.
            third = await asyncio.wait_for(committer.submit(2), timeout=5)
        finally:
            stuck.release.set()
        return second, third, await first

    assert asyncio.run(scenario()) == (10, 20, 0)
    assert stuck.groups == [[0], [1], [2]]


def test_a_stalled_group_is_answered_once_it_is_done_and_the_groups_gather_again() -> None:
    stuck = _Stuck()
    committer: AsyncGroups[int, int] = AsyncGroups(stuck, stall_after=0.05)

    async def scenario() -> list[int]:
        first = asyncio.ensure_future(committer.submit(0))
        await asyncio.sleep(0.2)
        stuck.release.set()
        assert await first == 0
        # Nothing stalled any more: requests arriving while a group runs share the next one.
        return list(await asyncio.gather(*(committer.submit(i) for i in range(1, 5))))

    assert asyncio.run(scenario()) == [10, 20, 30, 40]
    assert stuck.groups == [[0], [1, 2, 3, 4]]


def test_no_more_than_max_running_groups_are_applied_at_once() -> None:
    # The database itself stalls: the groups stuck behind it are bounded, and the requests
    # after them wait instead of taking every thread and connection of the process.
    stuck = _Stuck()
    committer: AsyncGroups[int, int] = AsyncGroups(stuck, stall_after=0.05, max_running=2)

    async def scenario() -> tuple[bool, int, list[int]]:
        first = asyncio.ensure_future(committer.submit(0))
        try:
            await stuck.until_entered()
            stuck.entered.clear()
            second = asyncio.ensure_future(committer.submit(-1))  # goes beside it, and sticks
            await stuck.until_entered()
            later = []
            for item in (3, 4, 5):  # each after both have stalled
                await asyncio.sleep(0.15)
                later.append(asyncio.ensure_future(committer.submit(item)))
            await asyncio.sleep(0.15)
            waited = not any(task.done() for task in later)
            tasks = len(committer._queues[asyncio.get_running_loop()].tasks)
        finally:
            stuck.release.set()
        return waited, tasks, [await first, await second, *[await task for task in later]]

    assert asyncio.run(scenario()) == (True, 2, [0, -10, 30, 40, 50])
    assert stuck.groups[:2] == [[0], [-1]]


def test_a_task_cancelled_before_it_ran_answers_its_requests_and_the_next_ones_go() -> None:
    committer: AsyncGroups[int, int] = AsyncGroups(lambda items: [i * 10 for i in items])

    async def scenario() -> int:
        submitted = asyncio.ensure_future(committer.submit(1))
        await asyncio.sleep(0)  # submit has started the group's task; it has not run yet
        for task in list(committer._queues[asyncio.get_running_loop()].tasks):
            task.cancel()  # the server stopping
        with pytest.raises(RuntimeError, match="cancelled"):
            await asyncio.wait_for(submitted, timeout=5)
        return await asyncio.wait_for(committer.submit(2), timeout=5)

    assert asyncio.run(scenario()) == 20


def test_a_request_arriving_just_after_a_task_was_cancelled_is_applied() -> None:
    committer: AsyncGroups[int, int] = AsyncGroups(lambda items: [i * 10 for i in items])

    async def scenario() -> list[int]:
        first = asyncio.ensure_future(committer.submit(1))
        await asyncio.sleep(0)  # submit has started the group's task; it has not run yet
        for task in list(committer._queues[asyncio.get_running_loop()].tasks):
            task.cancel()
        # Submitted before the cancelled task's done callback has run: a new task takes it,
        # and the item waiting before it.
        late = asyncio.ensure_future(committer.submit(3))
        return list(await asyncio.wait_for(asyncio.gather(first, late), timeout=5))

    assert asyncio.run(scenario()) == [10, 30]
