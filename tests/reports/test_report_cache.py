"""The report cache: reused while the data version holds, recomputed once when it changes or
ages out, and, when a caller allows it, an older value served while the new one is computed."""

from __future__ import annotations

import threading
import time

from reports.cache import ReportCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def counter() -> tuple[list[int], object]:
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        return len(calls)

    return calls, compute


def test_reused_while_the_version_holds_and_recomputed_when_it_changes():
    clock = Clock()
    cache: ReportCache[int] = ReportCache(max_age=60, clock=clock)
    calls, compute = counter()
    assert cache.get_or_compute("k", 1, compute) == 1
    assert cache.get_or_compute("k", 1, compute) == 1
    assert cache.get_or_compute("k", 2, compute) == 2  # new data
    assert cache.get_or_compute("other", 2, compute) == 3  # another view
    clock.now = 61
    assert cache.get_or_compute("k", 2, compute) == 4  # aged out
    assert len(calls) == 4
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 4, 2)


def test_an_older_value_is_served_while_the_new_one_is_computed():
    clock = Clock()
    cache: ReportCache[str] = ReportCache(max_age=600, clock=clock, stale_for=300)
    release = threading.Event()

    def slow() -> str:
        release.wait(5)
        return "new"

    assert cache.get_or_compute("k", 1, lambda: "old") == "old"
    assert cache.get_or_compute("k", 2, slow, allow_stale=True) == "old"
    assert cache.refreshing("k")
    assert cache.get_or_compute("k", 2, slow, allow_stale=True) == "old"  # one refresh only
    release.set()
    cache.wait_idle(5)
    assert not cache.refreshing("k")
    assert cache.get_or_compute("k", 2, slow, allow_stale=True) == "new"
    assert cache.stats().stale == 2
    # Without allow_stale, or past stale_for, the caller waits for the current value.
    assert cache.get_or_compute("k", 3, lambda: "strict") == "strict"
    clock.now = 301
    assert cache.get_or_compute("k", 4, lambda: "too old", allow_stale=True) == "too old"


def test_a_failed_refresh_keeps_the_older_value():
    cache: ReportCache[str] = ReportCache(stale_for=300)
    cache.get_or_compute("k", 1, lambda: "old")

    def broken() -> str:
        raise RuntimeError("database gone")

    assert cache.get_or_compute("k", 2, broken, allow_stale=True) == "old"
    cache.wait_idle(5)
    assert cache.get_or_compute("k", 2, lambda: "new", allow_stale=True) == "old"
    cache.wait_idle(5)
    assert cache.get_or_compute("k", 2, lambda: "unused", allow_stale=True) == "new"


def test_concurrent_misses_compute_once():
    cache: ReportCache[int] = ReportCache()
    calls: list[int] = []

    def compute() -> int:
        calls.append(1)
        time.sleep(0.2)
        return 7

    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("k", 1, compute)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == [7, 7, 7, 7] and len(calls) == 1
