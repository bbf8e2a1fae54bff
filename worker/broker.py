"""The dramatiq broker, chosen once at import from NPS_BROKER_URL.

dramatiq binds actors to the global broker when they are declared, so this module must be
imported before any actor module: Redis when NPS_BROKER_URL is set, otherwise an in-process
StubBroker (the `demo` and the tests) that `worker.inprocess` drives with a real dramatiq Worker.
The broker only carries work; what is due lives in the database (DESIGN principle 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

EVENTS_QUEUE = "events"
SENDS_QUEUE = "sends"

F = TypeVar("F", bound=Callable[..., Any])


def _make_broker() -> dramatiq.Broker:
    url = os.environ.get("NPS_BROKER_URL")
    if url:
        return RedisBroker(url=url)  # type: ignore[no-untyped-call]
    broker = StubBroker()
    broker.emit_after("process_boot")
    return broker


broker = _make_broker()
dramatiq.set_broker(broker)


def actor(queue_name: str, **options: Any) -> Callable[[F], dramatiq.Actor[Any, Any]]:
    """`dramatiq.actor` with the queue name pinned (the names are part of the contract)."""

    def decorate(fn: F) -> dramatiq.Actor[Any, Any]:
        return dramatiq.actor(queue_name=queue_name, broker=broker, **options)(fn)

    return decorate
