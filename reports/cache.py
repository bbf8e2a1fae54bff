"""A per-process cache of report views, kept until the data they were computed from changes.

The report over a large period fits the propensity model on every invitee, which takes seconds
at a million invitations; a dashboard load must not repeat it when nothing changed. Each entry is
stored under its view's key (period, filters, segment, config version) with the
:func:`data_version` it was computed at, and is reused while that version holds. The version is
one cheap statement (index probes only): the largest survey, order, skip and answer ids (new
rows) and the latest survey state change (answers, closings, deliveries, opt-outs). Time moves
an open invitation past its window without a write until the scheduler closes it, so an entry
is also recomputed after ``max_age`` seconds.

Concurrent loads of one missing key compute it once: the others wait for the first.
"""

from __future__ import annotations

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
    misses: int
    entries: int


class ReportCache(Generic[T]):
    """Values by key, each valid for one data version and at most ``max_age`` seconds."""

    def __init__(
        self,
        max_age: float = DEFAULT_MAX_AGE,
        max_entries: int = DEFAULT_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._lock = threading.Lock()
        self._computing: dict[Hashable, threading.Lock] = {}
        self._hits = 0
        self._misses = 0

    def _fresh(self, key: Hashable, version: Hashable) -> _Entry[T] | None:
        entry = self._entries.get(key)
        if entry is None or entry.version != version:
            return None
        if self._clock() - entry.stored_at > self.max_age:
            return None
        self._entries.move_to_end(key)
        return entry

    def get_or_compute(self, key: Hashable, version: Hashable, compute: Callable[[], T]) -> T:
        """The cached value of ``key`` at ``version``, computed (once) when missing or stale."""
        with self._lock:
            entry = self._fresh(key, version)
            if entry is not None:
                self._hits += 1
                return entry.value
            key_lock = self._computing.setdefault(key, threading.Lock())
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

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries))
