"""The heap a long-running process is left with once it has started.

Start-up builds a large heap of objects that live as long as the process: modules, SQLAlchemy's
mappers and statement caches, pydantic's validators, the phone-number metadata. Python's cyclic
garbage collector walks every one of them at each collection of its oldest generation, which a
process handling batches of events triggers every few seconds: in the ingest benchmark those
full collections were about 9% of the CPU. :func:`freeze_startup_heap` moves what is alive at
the end of start-up out of the collector's reach (``gc.freeze``). Objects made afterwards are
collected as before, and a frozen object is still freed as soon as nothing refers to it; only a
reference cycle among frozen objects would stay, and start-up leaves none worth reclaiming once
its garbage is collected first.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Collect start-up's garbage, then freeze every object still alive; returns how many
    objects the collector now leaves alone. Called once a process has imported and built
    everything it serves with (web, worker, scheduler, ``ingest``), never by a library."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
