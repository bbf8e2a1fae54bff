"""Group commit: each thread gets its own result, groups form while one is applied, a failure
reaches every thread of its group and no other."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from models.group_commit import GroupCommit, GroupNotApplied


def test_a_lone_item_is_applied_at_once_in_a_group_of_its_own() -> None:
    groups: list[list[int]] = []

    def apply(items: list[int]) -> list[int]:
        groups.append(items)
        return [item * 10 for item in items]

    committer = GroupCommit(apply)
    assert committer.submit(1) == 10
    assert committer.submit(2) == 20
    assert groups == [[1], [2]]


def test_items_arriving_while_a_group_is_applied_share_the_next_group() -> None:
    first_running = threading.Event()
    release_first = threading.Event()
    groups: list[list[int]] = []

    def apply(items: list[int]) -> list[str]:
        groups.append(list(items))
        if items == [0]:
            first_running.set()
            assert release_first.wait(10)
        return [f"done {item}" for item in items]

    committer: GroupCommit[int, str] = GroupCommit(apply)
    with ThreadPoolExecutor(max_workers=6) as pool:
        first = pool.submit(committer.submit, 0)
        assert first_running.wait(10)
        rest = [pool.submit(committer.submit, item) for item in range(1, 6)]
        # Every other item is waiting before the first group ends.
        while len(committer._waiting) < 5:
            threading.Event().wait(0.001)
        release_first.set()
        assert first.result(10) == "done 0"
        assert [f.result(10) for f in rest] == [f"done {i}" for i in range(1, 6)]
    assert groups[0] == [0]
    assert sorted(groups[1]) == [1, 2, 3, 4, 5]
    assert len(groups) == 2


def test_groups_hold_at_most_max_group_items() -> None:
    block = threading.Event()
    started = threading.Event()
    sizes: list[int] = []

    def apply(items: list[int]) -> list[int]:
        sizes.append(len(items))
        if items == [-1]:
            started.set()
            assert block.wait(10)
        return items

    committer = GroupCommit(apply, max_group=2)
    with ThreadPoolExecutor(max_workers=6) as pool:
        head = pool.submit(committer.submit, -1)
        assert started.wait(10)
        rest = [pool.submit(committer.submit, item) for item in range(5)]
        while len(committer._waiting) < 5:
            threading.Event().wait(0.001)
        block.set()
        assert head.result(10) == -1
        assert sorted(f.result(10) for f in rest) == list(range(5))
    assert sizes[0] == 1
    assert sorted(sizes[1:]) == [1, 2, 2]


def test_a_failed_group_raises_in_each_of_its_threads_and_the_next_group_still_runs() -> None:
    calls = 0

    def apply(items: list[str]) -> list[str]:
        nonlocal calls
        calls += 1
        if "bad" in items:
            raise RuntimeError("database went away")
        return items

    committer = GroupCommit(apply)
    with pytest.raises(RuntimeError, match="database went away"):
        committer.submit("bad")
    assert committer.submit("good") == "good"
    assert calls == 2


def test_a_wrong_number_of_results_fails_the_group_instead_of_mixing_results_up() -> None:
    committer: GroupCommit[int, int] = GroupCommit(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for a group of 1"):
        committer.submit(5)


def test_max_group_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_group"):
        GroupCommit(lambda items: items, max_group=0)


def test_a_stalled_group_lets_the_next_start_beside_it_after_stall_after() -> None:
    stalled = threading.Event()
    release = threading.Event()
    groups: list[list[str]] = []

    def apply(items: list[str]) -> list[str]:
        groups.append(list(items))
        if items == ["slow"]:
            stalled.set()
            assert release.wait(10)
        return [item.upper() for item in items]

    committer: GroupCommit[str, str] = GroupCommit(apply, stall_after=0.05)
    with ThreadPoolExecutor(max_workers=3) as pool:
        slow = pool.submit(committer.submit, "slow")
        assert stalled.wait(10)
        # Both finish while the slow group is still being applied.
        assert pool.submit(committer.submit, "a").result(5) == "A"
        assert pool.submit(committer.submit, "b").result(5) == "B"
        assert not slow.done()
        release.set()
        assert slow.result(10) == "SLOW"
    assert groups[0] == ["slow"]
    assert committer._running == 0


def test_without_a_stall_the_next_group_waits_for_the_running_one() -> None:
    running = threading.Event()
    release = threading.Event()

    def apply(items: list[str]) -> list[str]:
        if items == ["first"]:
            running.set()
            assert release.wait(10)
        return items

    committer: GroupCommit[str, str] = GroupCommit(apply, stall_after=30)
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(committer.submit, "first")
        assert running.wait(10)
        second = pool.submit(committer.submit, "second")
        threading.Event().wait(0.2)
        assert not second.done()  # waiting for the running group, not applied beside it
        release.set()
        assert (first.result(10), second.result(10)) == ("first", "second")


def test_a_leader_interrupted_while_waiting_leaves_no_group_running() -> None:
    class Interrupted(BaseException):
        pass

    calls = 0

    def apply(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Interrupted
        return items

    committer: GroupCommit[int, int] = GroupCommit(apply)
    with pytest.raises(Interrupted):
        committer.submit(1)
    assert committer._running == 0
    assert committer.submit(2) == 2


def test_after_a_group_of_one_nothing_is_gathered() -> None:
    committer: GroupCommit[int, int] = GroupCommit(
        lambda items: items, stall_after=60, gather_for=30
    )
    with ThreadPoolExecutor(max_workers=1) as pool:
        for item in range(3):
            assert pool.submit(committer.submit, item).result(timeout=10) == item


def _until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds; fail after 10 s rather than hang the run."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


@dataclass
class _Gathering:
    """A committer whose last group held three items, so that its next leader gathers; the
    groups it applied and each item's outcome. ``gather_for`` is far longer than any wait here:
    a group gathered in time was completed by a wake-up, not by the leader's timeout."""

    groups: list[list[str]] = field(default_factory=list)
    outcomes: dict[str, object] = field(default_factory=dict)
    release_first: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.committer: GroupCommit[str, str] = GroupCommit(
            self._apply, stall_after=600, gather_for=300
        )
        first = self.start("first")
        _until(lambda: bool(self.groups))
        three = [self.start(item) for item in "abc"]
        _until(lambda: len(self.committer._waiting) == 3)
        self.release_first.set()
        self.join(first, *three)
        assert [self.outcomes[item] for item in ("first", "a", "b", "c")] == [
            "first",
            "a",
            "b",
            "c",
        ]
        assert self.committer._last_size == 3

    def _apply(self, items: list[str]) -> list[str]:
        self.groups.append(list(items))
        if items == ["first"]:
            assert self.release_first.wait(10)
        return items

    def _run(self, item: str) -> None:
        try:
            self.outcomes[item] = self.committer.submit(item)
        except BaseException as exc:
            self.outcomes[item] = exc

    def start(self, item: str) -> threading.Thread:
        """``submit(item)`` in a daemon thread: one left gathering must not hold the run."""
        thread = threading.Thread(target=self._run, args=(item,), daemon=True)
        thread.start()
        return thread

    @staticmethod
    def join(*threads: threading.Thread) -> None:
        for thread in threads:
            thread.join(10)

    def complete_the_next_group(self) -> None:
        """Three items come back one by one: the first leads and gathers, the third completes
        the group and must wake it."""
        lead = self.start("d")
        _until(lambda: self.committer._gathering)
        second = self.start("e")
        _until(lambda: len(self.committer._waiting) == 2)
        assert self.committer._gathering and len(self.groups) == 2  # two of three: still waiting
        last = self.start("f")
        self.join(lead, second, last)
        assert not self.committer._gathering, "the completing item did not wake the leader"
        assert [self.outcomes[item] for item in "def"] == ["d", "e", "f"]
        assert [sorted(group) for group in self.groups] == [
            ["first"],
            ["a", "b", "c"],
            ["d", "e", "f"],
        ]


def test_a_leader_gathers_as_many_items_as_the_last_group_held() -> None:
    """The threads of a group come back one by one: the first waits for the others instead of
    leading a group of one ahead of them, and the item that completes the group wakes it."""
    _Gathering().complete_the_next_group()


def test_a_waiter_left_on_the_arrival_condition_does_not_swallow_the_wake_up() -> None:
    """A gathering leader stopped inside Condition.wait (between queueing its waiter and
    releasing the lock, or after a timed-out wait takes the lock back and before it unqueues the
    waiter) leaves its waiter on ``_arrived``; a notify() of one waiter would release that one
    instead of the live leader. Simulated by queueing a dead waiter."""
    gathering = _Gathering()
    dead = threading.Lock()
    dead.acquire()
    with gathering.committer._lock:
        gathering.committer._arrived._waiters.append(dead)  # type: ignore[attr-defined]
    gathering.complete_the_next_group()


def test_while_a_group_is_stuck_later_groups_are_not_held_back_one_stall_after_each() -> None:
    """While one group is stuck, every group after the one that went round it starts at once:
    the stall is measured from the latest group still running, not from a finished one."""
    release = threading.Event()

    def apply(items: list[str]) -> list[str]:
        if "stuck" in items:
            assert release.wait(30)
        return items

    committer: GroupCommit[str, str] = GroupCommit(apply, stall_after=60)
    with ThreadPoolExecutor(max_workers=2) as pool:
        stuck = pool.submit(committer.submit, "stuck")
        try:
            while committer._running == 0:
                time.sleep(0.001)
            committer._groups[0].started -= 120  # stuck for two minutes already
            for i in range(5):
                # Each would wait a whole minute if measured from the group before it.
                assert pool.submit(committer.submit, f"next {i}").result(10) == f"next {i}"
        finally:
            release.set()
        assert stuck.result(10) == "stuck"


class _Interrupt(BaseException):
    pass


def _run_all(committer: GroupCommit[int, int], items: list[int]) -> dict[int, object]:
    """Submit each item from its own thread; each item's result or exception. Daemon threads:
    a stuck one would otherwise keep the test process alive."""
    outcomes: dict[int, object] = {}

    def run(item: int) -> None:
        try:
            outcomes[item] = committer.submit(item)
        except BaseException as exc:
            outcomes[item] = exc

    threads = [threading.Thread(target=run, args=(item,), daemon=True) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert not [t.name for t in threads if t.is_alive()], outcomes
    assert committer._running == 0 and committer._waiting == []
    return outcomes


def test_an_interrupt_as_the_leader_ends_its_group_leaves_no_thread_waiting() -> None:
    """A real asynchronous exception raised into the leader as ``apply`` returns: it lands while
    the leader publishes the results; every thread of the group still gets an answer and the
    group no longer counts."""
    first_running = threading.Event()
    release = threading.Event()
    committer: GroupCommit[int, int]

    def apply(items: list[int]) -> list[int]:
        if items == [0]:
            first_running.set()
            assert release.wait(10)
        else:
            _raise_in(threading.current_thread(), _Interrupt)  # delivered on the way out
        return items

    committer = GroupCommit(apply, stall_after=5.0)
    first = threading.Thread(target=committer.submit, args=(0,))
    first.start()
    assert first_running.wait(10)
    timer = threading.Timer(0.2, release.set)
    timer.start()
    outcomes = _run_all(committer, [1, 2, 3])
    first.join(5)
    # Each thread has its own result, or the failure of its group: never nothing. The interrupt
    # stays with the leader; the others of its group fail with an ordinary error.
    failed = [o for o in outcomes.values() if not isinstance(o, int)]
    assert all(o == item or o in failed for item, o in outcomes.items()), outcomes
    assert sum(isinstance(o, _Interrupt) for o in failed) == 1, outcomes
    assert all(isinstance(o, _Interrupt | GroupNotApplied) for o in failed), outcomes


@pytest.mark.parametrize("where", ["before", "after"])
def test_a_leader_stopped_while_taking_its_group_leaves_no_item_behind(where: str) -> None:
    """An exception in the leader as it takes the waiting items (simulated around ``_take``,
    whose marking cannot be split): before, every item stays queued for the next leader and
    only the stopped leader raises; after, the group fails for every item it took."""
    release = threading.Event()
    applied: list[list[int]] = []

    def apply(items: list[int]) -> list[int]:
        applied.append(list(items))
        if items == [0]:
            assert release.wait(10)
        return items

    committer: GroupCommit[int, int] = GroupCommit(apply, stall_after=5.0)
    take = committer._take
    stopped: list[threading.Thread] = []

    def interrupted_take(group: Any) -> None:
        if not stopped:
            stopped.append(threading.current_thread())
            if where == "before":
                raise _Interrupt()
            take(group)
            raise _Interrupt()
        take(group)

    first = threading.Thread(target=committer.submit, args=(0,))
    first.start()
    while committer._running == 0:
        time.sleep(0.001)
    committer._take = interrupted_take  # type: ignore[method-assign]
    threading.Timer(0.2, release.set).start()
    outcomes = _run_all(committer, [1, 2, 3])
    first.join(5)
    failed = {item for item, outcome in outcomes.items() if not isinstance(outcome, int)}
    # Only the stopped leader raises the interrupt; the rest of its group fail as on any error.
    interrupted = [item for item in failed if isinstance(outcomes[item], _Interrupt)]
    assert len(interrupted) == 1, outcomes
    assert all(isinstance(outcomes[item], GroupNotApplied) for item in failed - {*interrupted})
    assert all(outcomes[item] == item for item in set(outcomes) - failed), outcomes
    applied_after = [item for group in applied[1:] for item in group]
    if where == "before":
        assert len(failed) == 1  # the stopped leader; its item went away with it
        assert sorted(applied_after) == sorted(set(outcomes) - failed)
    else:
        assert len(failed) >= 1  # every item of the group it took, none applied
        assert sorted(applied_after) == sorted(set(outcomes) - failed)


class _InterruptedAppend(list[Any]):
    """Raises _Interrupt once, right after queueing: where an asynchronous exception lands as
    ``list.append`` returns."""

    armed = True

    def append(self, value: Any) -> None:
        super().append(value)
        if self.armed:
            self.armed = False
            raise _Interrupt()


def test_a_thread_interrupted_as_its_item_is_queued_takes_the_item_away() -> None:
    applied: list[str] = []

    def apply(items: list[str]) -> list[str]:
        applied.extend(items)
        return items

    committer: GroupCommit[str, str] = GroupCommit(apply)
    committer._waiting = _InterruptedAppend()
    with pytest.raises(_Interrupt):
        committer.submit("left")
    assert committer._waiting == []
    assert committer.submit("next") == "next"
    assert applied == ["next"]  # never applied with nobody to answer


def test_gather_for_must_be_shorter_than_stall_after() -> None:
    with pytest.raises(ValueError, match="gather_for"):
        GroupCommit(lambda items: items, stall_after=0.01, gather_for=0.01)


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    assert thread.ident is not None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def test_a_waiter_interrupted_before_its_group_is_taken_takes_its_item_away() -> None:
    """A real asynchronous exception (as dramatiq's time limit raises) in a waiting thread: the
    item leaves with it, so no later group applies it with nobody to answer (its message runs
    again and would apply it twice)."""
    release = threading.Event()
    applied: list[str] = []

    def apply(items: list[str]) -> list[str]:
        applied.extend(items)
        if items == ["slow"]:
            assert release.wait(10)
        return items

    committer: GroupCommit[str, str] = GroupCommit(apply, stall_after=5.0)
    lead = threading.Thread(target=committer.submit, args=("slow",))
    lead.start()
    while committer._running == 0:
        time.sleep(0.001)
    raised: list[BaseException] = []

    def victim() -> None:
        try:
            committer.submit("victim")
        except BaseException as exc:
            raised.append(exc)

    v = threading.Thread(target=victim)
    v.start()
    while len(committer._waiting) < 1:
        time.sleep(0.001)
    time.sleep(0.05)
    _raise_in(v, _Interrupt)
    release.set()  # the group's end notifies, the victim wakes and raises
    v.join(5)
    lead.join(5)
    assert raised and isinstance(raised[0], _Interrupt)
    committer.submit("next")
    assert "victim" not in applied, applied
