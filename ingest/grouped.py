"""Single shop events handed in by a worker's threads, applied together in shared batches.

A queue message of ``ingest_event`` carries one event. Applied alone, each pays the fixed cost of
a batch (about ten statements and a commit) for one event. :class:`GroupedIngest` lets the
threads of one worker process share it: each thread submits its event and gets that event's own
:class:`~ingest.service.IngestResult`; the first thread to find nothing being applied applies
every event waiting with one :func:`~ingest.service.ingest_batch` (``models.group_commit``).
Under light load a group holds one event and waits for nothing; under load it holds about one
event per busy thread (a leader waits up to :data:`GATHER_FOR` for the threads of the last
group to come back with their next event).

Each event's outcome is the one it would get applied alone, after the events before it in its
group: ``ingest_batch`` applies a group in the order the events arrived, starting a new run for a
second event with the same ``event_id`` or about the same order, and plans the purchases of one
customer one after the other. When the group's set fails, ``ingest_batch`` applies the events one
by one, so only the event at fault is answered as failed; when the whole group fails (the
database is away) every thread gets that exception and its message runs again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest.service import IngestResult, ingest_batch
from models.group_commit import GroupCommit

__all__ = ["GroupFailed", "GroupStats", "GroupedIngest", "grouped_ingest"]

#: Far above a worker's thread count: a group is bounded by the threads waiting anyway.
MAX_GROUP = 256

#: How long a group waits for the threads of the last group to come back with their next event.
GATHER_FOR = 0.002


class Context(Protocol):
    """Where a group is applied; read when the group is applied, so that a reloaded config
    applies to the next group (a process's runtime is one)."""

    @property
    def factory(self) -> sessionmaker[Session]: ...

    @property
    def config(self) -> OperatorConfig: ...


class GroupFailed(Exception):
    """The thread applying a group was interrupted (a time limit, a shutdown): the events of the
    group are answered with this, an ordinary failure, so each of their messages runs again."""


@dataclass(frozen=True, slots=True)
class GroupStats:
    groups: int
    events: int

    @property
    def mean_group(self) -> float:
        return self.events / self.groups if self.groups else 0.0


class GroupedIngest:
    """Apply single events from many threads in shared batches; see the module's docstring."""

    def __init__(self, context: Callable[[], Context], max_group: int = MAX_GROUP) -> None:
        self._context = context
        self._commit: GroupCommit[Any, IngestResult] = GroupCommit(
            self.apply, max_group, gather_for=GATHER_FOR
        )
        self._count = threading.Lock()
        self._groups = 0
        self._events = 0

    def submit(self, raw: Any) -> IngestResult:
        """Apply ``raw`` in the next group; its own result, once the group has committed, or the
        exception that failed the group."""
        return self._commit.submit(raw)

    def apply(self, raws: list[Any]) -> list[IngestResult]:
        """Apply one group: its events in the order given, one result each."""
        try:
            context = self._context()
            results = ingest_batch(context.factory, raws, context.config)
        except Exception:
            raise
        except BaseException as exc:
            # Raised in this thread only (dramatiq's time limit, its shutdown notice); the other
            # threads of the group must fail as on any error, not as if interrupted themselves.
            raise GroupFailed(f"group of {len(raws)} events interrupted") from exc
        with self._count:
            self._groups += 1
            self._events += len(raws)
        return results

    def stats(self) -> GroupStats:
        """How many groups were applied, holding how many events."""
        with self._count:
            return GroupStats(self._groups, self._events)


_lock = threading.Lock()
_per_process: dict[tuple[int, int], GroupedIngest] = {}


def grouped_ingest(context: Callable[[], Context]) -> GroupedIngest:
    """The process's :class:`GroupedIngest` for ``context`` (the same function on every call,
    e.g. ``wiring.runtime.get_runtime``); a forked process makes its own."""
    key = (os.getpid(), id(context))
    with _lock:
        grouped = _per_process.get(key)
        if grouped is None:
            grouped = _per_process[key] = GroupedIngest(context)
        return grouped
