"""The heap a long-running process is left with once it has started.

Start-up builds a large heap of objects that live as long as the process: modules and their
classes and functions, SQLAlchemy's tables and mappers, pydantic's validators, FastAPI's routes.
Python's cyclic garbage collector walks every one of them at each collection of its oldest
generation, which a process handling batches of events triggers every few seconds: in the ingest
benchmark those full collections were about 9% of the CPU, and among the longest pauses of the
web process. :func:`freeze_startup_heap` moves what is alive at the end of start-up out of the
collector's reach (``gc.freeze``).

Objects made afterwards are collected as before (what is built on first use, such as a worker's
runtime and the phone-number tables of each country, stays in the collector's generations). A
frozen object is still freed as soon as nothing refers to it; what the collector no longer
reclaims is a reference cycle that runs through a frozen object, which start-up's objects, kept
for the life of the process, do not form with the objects of a request or a message.
"""

from __future__ import annotations

import gc

from sqlalchemy.orm import configure_mappers

__all__ = ["freeze_startup_heap"]


def freeze_startup_heap() -> int:
    """Finish building the mappers, collect start-up's garbage, then freeze every object still
    alive; returns how many objects the collector now leaves alone. Called once a process has
    imported and built what it serves with (web, worker, scheduler, ``ingest``), never by a
    library and never in the test process."""
    configure_mappers()  # otherwise built on the first query, after the freeze
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
