"""The limit on batches applied at once (``worker.slots``), with real threads and real
asynchronous exceptions, as dramatiq's time limit raises them."""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Callable

import pytest

from worker.slots import Slots


class Interrupted(BaseException):  # as dramatiq's interrupts are
    pass


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    assert thread.ident is not None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


def _until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def test_no_more_than_the_limit_hold_a_slot_at_once() -> None:
    slots = Slots(3)
    inside, most = 0, 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with slots.held():
            with lock:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert most == 3 and slots.taken == 0


def test_a_failure_inside_frees_the_slot() -> None:
    slots = Slots(1)
    for _ in range(3):
        with pytest.raises(RuntimeError), slots.held():
            raise RuntimeError("the batch failed")
    assert slots.taken == 0
    with slots.held():
        assert slots.taken == 1


def test_a_waiter_interrupted_leaves_the_slot_to_the_next() -> None:
    """One thread holds the only slot; of two waiting, one is interrupted as dramatiq's time
    limit would: once the slot is freed, the other still gets it."""
    slots = Slots(1)
    release = threading.Event()
    got: list[str] = []
    outcomes: dict[str, str] = {}

    def hold() -> None:
        with slots.held():
            release.wait(10)

    def wait(name: str) -> None:
        try:
            with slots.held():
                got.append(name)
            outcomes[name] = "ran"
        except Interrupted:
            outcomes[name] = "interrupted"

    holder = threading.Thread(target=hold)
    holder.start()
    _until(lambda: slots.taken == 1)
    doomed = threading.Thread(target=wait, args=("doomed",))
    patient = threading.Thread(target=wait, args=("patient",))
    doomed.start()
    patient.start()
    time.sleep(0.2)  # both are waiting
    _raise_in(doomed, Interrupted)
    doomed.join(10)
    release.set()
    for thread in (holder, patient):
        thread.join(10)
    assert outcomes == {"doomed": "interrupted", "patient": "ran"}
    assert got == ["patient"] and slots.taken == 0


def test_a_holder_interrupted_inside_frees_its_slot() -> None:
    slots = Slots(1)
    entered = threading.Event()
    outcome: list[str] = []

    def work() -> None:
        try:
            with slots.held():
                entered.set()
                while True:  # a long batch, stopped by the time limit
                    time.sleep(0.01)
        except Interrupted:
            outcome.append("interrupted")

    thread = threading.Thread(target=work)
    thread.start()
    assert entered.wait(10)
    _raise_in(thread, Interrupted)
    thread.join(10)
    assert outcome == ["interrupted"] and slots.taken == 0


def test_many_interrupts_at_random_moments_leave_every_slot_usable() -> None:
    """Threads taking and freeing slots in a loop, each interrupted once at an arbitrary moment
    (in the middle of taking or freeing, possibly): afterwards the interrupted threads, still
    alive, hold no slot, and two threads hold both slots at once."""
    slots = Slots(2)
    stop = threading.Event()

    def churn() -> None:
        try:
            while not stop.is_set():
                with slots.held():
                    pass
        except Interrupted:
            pass
        finally:
            done.wait(10)  # stays alive: an entry it left would not be forgotten

    done = threading.Event()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        time.sleep(0.01)
        _raise_in(thread, Interrupted)
    stop.set()
    _until(lambda: slots.taken == 0)  # the interrupted threads, still alive, hold none
    done.set()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive()
    both = threading.Barrier(2, timeout=10)
    passed: list[bool] = []

    def hold_together() -> None:
        with slots.held():
            both.wait()
            passed.append(True)

    pair = [threading.Thread(target=hold_together) for _ in range(2)]
    for thread in pair:
        thread.start()
    for thread in pair:
        thread.join(15)
    assert passed == [True, True]


def test_an_entry_left_by_an_ended_thread_is_forgotten() -> None:
    slots = Slots(1)
    gone = threading.Thread(target=lambda: None)
    gone.start()
    gone.join()
    slots._holders = {gone: True}  # as an interrupt inside ``finally`` would leave it
    taken: list[int] = []

    def take() -> None:
        with slots.held():
            taken.append(slots.taken)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    assert taken == [1] and slots.taken == 0


def test_the_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="limit"):
        Slots(0)
