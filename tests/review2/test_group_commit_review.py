"""Adversarial review of models.group_commit (stall bypass, gather, one try)."""

from __future__ import annotations

import ctypes
import threading
import time

import pytest

from models.group_commit import GroupCommit


def test_after_a_stall_other_items_are_not_held_back_one_stall_after_each() -> None:
    """Docstring: 'one slow item delays only the items of its own group'. But once a bypass
    group has run, _latest_start is that (finished) group's start, and _running stays 1 because
    of the stalled group: every later item waits for stall_after again, so while one group is
    stuck the process applies one group per stall_after."""
    stall = 0.2
    release = threading.Event()

    def apply(items: list[str]) -> list[str]:
        if "slow" in items:
            assert release.wait(30)
        return items

    committer: GroupCommit[str, str] = GroupCommit(apply, stall_after=stall)
    slow = threading.Thread(target=committer.submit, args=("slow",))
    slow.start()
    while committer._running == 0:
        time.sleep(0.001)
    try:
        took = []
        for i in range(5):
            started = time.monotonic()
            assert committer.submit(f"fast {i}") == f"fast {i}"
            took.append(time.monotonic() - started)
        # The first may wait for the stall to be seen; the others should not wait at all.
        assert max(took[1:]) < stall / 2, took
    finally:
        release.set()
        slow.join(10)


def test_a_waiter_sees_a_stall_up_to_one_stall_after_late() -> None:
    """wait_for's timeout is counted from when the waiter started waiting, not from
    _latest_start, and no one notifies when a group becomes stalled: a waiter that started
    waiting just before another group started notices that group's stall only at its second
    timeout, up to 2 x stall_after after that group started instead of stall_after."""
    stall = 0.5
    release = threading.Event()

    def apply(items: list[str]) -> list[str]:
        if items[0] in ("a", "w"):
            assert release.wait(30)
        return items

    committer: GroupCommit[str, str] = GroupCommit(apply, max_group=1, stall_after=stall)
    threads = [threading.Thread(target=committer.submit, args=("a",))]
    threads[0].start()
    while committer._running == 0:
        time.sleep(0.001)
    t0 = time.monotonic()
    time.sleep(0.01)
    threads.append(threading.Thread(target=committer.submit, args=("w",)))
    threads[1].start()
    time.sleep(0.4)  # v starts waiting 0.1 s before w leads a group of its own at ~t0 + 0.5
    done_at: list[float] = []

    def submit_v() -> None:
        committer.submit("v")
        done_at.append(time.monotonic() - t0)

    v = threading.Thread(target=submit_v)
    v.start()
    try:
        v.join(3)
        # w's group started at ~t0 + 0.51; v may lead stall_after later, at ~t0 + 1.01.
        assert done_at and done_at[0] < 1.15, done_at
    finally:
        release.set()
        for t in (*threads, v):
            t.join(10)


class _Interrupt(BaseException):
    pass


class _ArmedCondition(threading.Condition):
    """Raises _Interrupt on entry once armed: where CPython delivers an asynchronous exception
    (dramatiq's time limit, PyThreadState_SetAsyncExc) on entering Condition.__enter__, a
    Python-level call that checks the eval breaker."""

    armed_for: threading.Thread | None = None

    def __enter__(self):  # type: ignore[override]
        if self.armed_for is threading.current_thread():
            self.armed_for = None
            raise _Interrupt()
        return super().__enter__()


def test_an_interrupt_in_the_finally_leaves_the_group_waiting_forever() -> None:
    """The finally at models/group_commit.py:129-135 takes the lock before marking the group
    done; an exception raised into the leader there skips marking and the decrement: the
    group's other threads wait forever and _running stays 1."""
    second_waiting = threading.Event()
    committer: GroupCommit[int, int]

    def apply(items: list[int]) -> list[int]:
        if items == [0]:
            # Let item 1 queue behind; the next group takes [1, 2].
            assert second_waiting.wait(10)
        elif 1 in items:
            committer._changed.armed_for = threading.current_thread()  # type: ignore[attr-defined]
        return items

    committer = GroupCommit(apply, stall_after=0.2)
    committer._changed = _ArmedCondition()
    outcomes: dict[int, object] = {}

    def run(item: int) -> None:
        try:
            outcomes[item] = committer.submit(item)
        except BaseException as exc:  # noqa: BLE001
            outcomes[item] = exc

    t0 = threading.Thread(target=run, args=(0,))
    t0.start()
    while committer._running == 0:
        time.sleep(0.001)
    t1 = threading.Thread(target=run, args=(1,))
    t2 = threading.Thread(target=run, args=(2,))
    t1.start()
    t2.start()
    while len(committer._waiting) < 2:
        time.sleep(0.001)
    second_waiting.set()
    t0.join(5)
    t1.join(2)
    t2.join(2)
    alive = [t.name for t in (t1, t2) if t.is_alive()]
    running = committer._running
    # Unblock the stuck threads so the test process can end.
    with committer._changed:
        for slot in [*committer._waiting]:
            pass
    assert not alive and running == 0, (alive, running, outcomes)


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    assert thread.ident is not None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def test_a_waiter_interrupted_before_its_group_is_taken_still_has_its_item_applied() -> None:
    """A real asynchronous exception (as dramatiq's time limit raises) in a waiting thread:
    the thread leaves submit with the exception, but its slot stays in _waiting and a later
    group applies the item, though its message fails and is retried (applied twice)."""
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
        except BaseException as exc:  # noqa: BLE001
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
