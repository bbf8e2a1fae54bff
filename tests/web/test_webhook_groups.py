"""web.webhook_groups: requests waiting while a group is applied share the next group, each
gets its own result, and a failure reaches every request of its group and no other."""

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


def test_a_group_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        AsyncGroups(lambda items: items, max_group=0)
