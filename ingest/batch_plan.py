"""Planning a purchase from rows already in memory, for the set-based path (``ingest.batch``).

:func:`dispatch.planning.plan_purchase` reads a customer's consent and recent surveys with a
query each; applying a thousand purchases that way costs thousands of statements. Here the same
rule, :func:`dispatch.planning.decide_purchase` itself, runs on what ``ingest.batch`` loaded for
the whole run: the consent records (ranked by :func:`models.customers.consent_rank`, the order
of :func:`models.customers.latest_consent`) and the purchase times of the surveys that count for
the frequency cap (:func:`dispatch.planning.within_cap`). The timing is
:func:`dispatch.planning.compute_schedule`. ``tests/ingest/test_batch_ingest.py`` checks that
both paths record the same thing for the same events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from config import OperatorConfig
from dispatch.planning import Decision, decide_purchase, schedule_values, within_cap
from models import Customer, Order
from models.customers import consent_rank

__all__ = ["ConsentBook", "Decision", "decide", "schedule_values"]

# An id above any stored one: records added during the run rank after every loaded record.
_NEW_ID_BASE = 1 << 62


@dataclass(slots=True)
class ConsentBook:
    """Each customer's consent records, by (customer id, channel), as (rank, granted)."""

    records: dict[tuple[int, str], list[tuple[tuple[datetime, bool, int], bool]]] = field(
        default_factory=dict
    )
    _added: int = 0

    def load(
        self,
        customer_id: int,
        channel: str,
        granted: bool,
        captured_at: datetime,
        recorded_at: datetime,
        record_id: int,
    ) -> None:
        rank = consent_rank(captured_at, recorded_at, granted, record_id)
        self.records.setdefault((customer_id, channel), []).append((rank, granted))

    def add(
        self,
        customer_id: int,
        channel: str,
        granted: bool,
        captured_at: datetime,
        recorded_at: datetime,
    ) -> None:
        self._added += 1
        self.load(
            customer_id, channel, granted, captured_at, recorded_at, _NEW_ID_BASE + self._added
        )

    def current(self, customer_id: int, channel: str) -> bool:
        """As :func:`models.customers.current_consent`: the grant of the highest-ranked record."""
        records = self.records.get((customer_id, channel))
        return records is not None and max(records)[1]


def decide(
    order: Order,
    customer: Customer,
    config: OperatorConfig,
    book: ConsentBook,
    counted: list[datetime],
    enabled: frozenset[str],
) -> Decision:
    """What :func:`dispatch.planning.plan_purchase` decides for this purchase, with the
    customer's consent read from ``book`` and ``counted`` holding the purchase times of the
    customer's surveys that count for the frequency cap; ``enabled`` the channels that are on
    (:func:`dispatch.planning.channels_on`, read once for the run)."""
    purchased_at = order.purchased_at
    return decide_purchase(
        order,
        customer,
        config,
        lambda channel: book.current(customer.id, channel),
        lambda: (
            purchased_at is not None
            and within_cap(counted, purchased_at, config.contact.frequency_cap)
        ),
        enabled,
    )
