"""A per-process cache of report views, kept until the data they were computed from changes.

The report over a large period fits the propensity model on every invitee, which takes seconds
at a million invitations; a dashboard load must not repeat it when nothing changed. Each entry is
stored under its view's key (period, filters, segment, config version) with the
:func:`data_version` it was computed at, and is reused while that version holds. The version is
one cheap statement (index probes only): the largest survey, order, skip and answer ids (new
rows) and the latest survey state change (answers, closings, deliveries, opt-outs). Time moves
an open invitation past its window without a write until the scheduler closes it, so an entry
is also recomputed after ``max_age`` seconds.

Concurrent loads of one missing key compute it once: the others wait for the first. A caller
may accept a recent value of an older version while the new one is computed in the background
(``stale_for``), so that a steady flow of answers does not make every page load a cold one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.orders import Order
from models.surveys import Answer, SkippedPurchase, Survey

T = TypeVar("T")
log = logging.getLogger(__name__)
DEFAULT_MAX_AGE: Final = 600.0
DEFAULT_ENTRIES: Final = 64


def data_version(session: Session) -> tuple[Any, ...]:
    """What a report's inputs are at: changes when an order, skip, survey or answer is added or
    a survey changes state."""
    stmt = select(
        select(func.max(Survey.id)).scalar_subquery(),
        select(func.max(Survey.state_changed_at)).scalar_subquery(),
        select(func.max(Answer.id)).scalar_subquery(),
        select(func.max(Order.id)).scalar_subquery(),
        select(func.max(SkippedPurchase.id)).scalar_subquery(),
    )
    row = session.execute(stmt).one()
    return tuple(str(v) if v is not None else None for v in row)


@dataclass(slots=True)
class _Entry(Generic[T]):
    version: Hashable
    stored_at: float
    value: T


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    stale: int
    misses: int
    entries: int


class ReportCache(Generic[T]):
    """Values by key, each valid for one data version and at most ``max_age`` seconds.

    ``stale_for``: a caller that allows it gets a value computed under an older data version
    (or past ``max_age``) at once, as long as it is at most this many seconds old, while the
    current one is computed in a background thread; the next caller gets the new one. With 0,
    every change of the data is computed before answering.
    """

    def __init__(
        self,
        max_age: float = DEFAULT_MAX_AGE,
        max_entries: int = DEFAULT_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
        stale_for: float = 0.0,
    ) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self.stale_for = stale_for
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}
        self._refreshing: dict[Hashable, threading.Thread] = {}
        self._hits = 0
        self._stale = 0
        self._misses = 0

    def _fresh(self, key: Hashable, version: Hashable) -> _Entry[T] | None:
        entry = self._entries.get(key)
        if entry is None or entry.version != version:
            return None
        if self._clock() - entry.stored_at > self.max_age:
            return None
        self._entries.move_to_end(key)
        return entry

    def get_or_compute(
        self,
        key: Hashable,
        version: Hashable,
        compute: Callable[[], T],
        *,
        allow_stale: bool = False,
    ) -> T:
        """The cached value of ``key`` at ``version``, computed (once) when missing or stale;
        with ``allow_stale``, a recent older value while the new one is computed behind."""
        with self._lock:
            entry = self._fresh(key, version)
            if entry is not None:
                self._hits += 1
                return entry.value
            old = self._entries.get(key)
            if allow_stale and old is not None and self._clock() - old.stored_at <= self.stale_for:
                self._stale += 1
                if key not in self._refreshing:
                    thread = threading.Thread(
                        target=self._refresh,
                        args=(key, version, compute),
                        name="report-cache-refresh",
                        daemon=True,
                    )
                    self._refreshing[key] = thread
                    thread.start()
                return old.value
            key_lock = self._computing.setdefault(key, threading.Lock())
        return self._compute(key, version, compute, key_lock)

    def _compute(
        self, key: Hashable, version: Hashable, compute: Callable[[], T], key_lock: threading.Lock
    ) -> T:
        with key_lock:
            with self._lock:
                entry = self._fresh(key, version)  # computed meanwhile by another request
                if entry is not None:
                    self._hits += 1
                    return entry.value
                self._misses += 1
            value = compute()
            with self._lock:
                self._entries[key] = _Entry(version, self._clock(), value)
                self._entries.move_to_end(key)
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
                self._computing.pop(key, None)
        return value

    def _refresh(self, key: Hashable, version: Hashable, compute: Callable[[], T]) -> None:
        try:
            with self._lock:
                key_lock = self._computing.setdefault(key, threading.Lock())
            self._compute(key, version, compute, key_lock)
        except Exception as exc:  # the stale value stays; the next caller tries again
            log.warning("report cache: a background refresh failed (%s)", type(exc).__name__)
        finally:
            with self._lock:
                self._refreshing.pop(key, None)

    def refreshing(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._refreshing

    def wait_idle(self, timeout: float | None = None) -> None:
        """Until every background refresh has finished (or ``timeout`` seconds passed each)."""
        with self._lock:
            threads = list(self._refreshing.values())
        for thread in threads:
            thread.join(timeout)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._stale, self._misses, len(self._entries))
