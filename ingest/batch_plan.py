"""Planning a purchase from rows already in memory, for the set-based path (``ingest.batch``).

:func:`dispatch.planning.plan_purchase` reads a customer's consent and recent surveys with a
query each; applying a thousand purchases that way costs thousands of statements. Here the same
rules run on what ``ingest.batch`` loaded for the whole run (consent records, the purchase times
of the surveys that count for the frequency cap), in the same order as ``plan_purchase``:
cancelled, test order, minimum total, the first channel with a current grant, a valid contact
and a configured provider, sampling, frequency cap. The timing is
:func:`dispatch.planning.compute_schedule` itself. ``tests/ingest/test_batch_ingest.py`` checks
that both paths record the same thing for the same events.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from channels.registry import enabled_channels
from config import OperatorConfig
from config.settings import environ
from dispatch.planning import ChannelChoice, Schedule, unit_hash
from models import Customer, Order, SkipReason
from models.customers import ContactStatus

__all__ = ["ConsentBook", "Decision", "choose_channel_with", "decide", "schedule_values"]

# An id above any stored one: records added during the run rank after every loaded record.
_NEW_ID_BASE = 1 << 62


@dataclass(slots=True)
class ConsentBook:
    """Each customer's consent records as (effective time, revocation first, id, granted)."""

    records: dict[tuple[int, str], list[tuple[datetime, bool, int, bool]]] = field(
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
        # A record takes effect at its capture time, never later than when it was recorded
        # (``models.customers._EFFECTIVE_AT``).
        effective = min(captured_at, recorded_at)
        key = (customer_id, channel)
        self.records.setdefault(key, []).append((effective, not granted, record_id, granted))

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
        """As :func:`models.customers.current_consent`: the latest record by effective time, a
        revocation before a grant at the same moment, then the latest recorded."""
        records = self.records.get((customer_id, channel))
        return records is not None and max(records)[3]


def choose_channel_with(
    consented: Callable[[str], bool],
    customer: Customer,
    config: OperatorConfig,
    exclude: tuple[str, ...] = (),
) -> ChannelChoice:
    """:func:`dispatch.planning.choose_channel` with the consent read from ``consented``."""
    enabled = enabled_channels(environ())
    consented_without_contact: SkipReason | None = None
    for channel in config.contact.channels:
        if channel in exclude or not consented(channel):
            continue
        _, status = customer.contact_for(channel)
        if status == ContactStatus.valid:
            if channel not in enabled:
                consented_without_contact = consented_without_contact or SkipReason.no_channel
                continue
            return ChannelChoice(channel, None)
        if status == ContactStatus.invalid or consented_without_contact is None:
            consented_without_contact = (
                SkipReason.invalid_contact
                if status == ContactStatus.invalid
                else SkipReason.no_contact
            )
    return ChannelChoice(None, consented_without_contact or SkipReason.no_consent)


@dataclass(frozen=True, slots=True)
class Decision:
    channel: str | None
    skip: SkipReason | None
    detail: str | None = None


def within_cap(counted: list[datetime], purchased_at: datetime, cap: timedelta) -> bool:
    """Another counted survey of the customer whose purchase lies within ``cap`` either way."""
    if cap <= timedelta(0):
        return False
    return any(purchased_at - cap < at < purchased_at + cap for at in counted)


def decide(
    order: Order,
    customer: Customer,
    config: OperatorConfig,
    book: ConsentBook,
    counted: list[datetime],
) -> Decision:
    """What :func:`dispatch.planning.plan_purchase` decides for this purchase: a channel, or
    the reason (and detail) it is skipped. ``counted`` holds the purchase times of the
    customer's surveys that count for the frequency cap."""
    contact = config.contact
    if order.cancelled_at is not None:
        return Decision(None, SkipReason.cancelled, order.cancel_kind)
    if order.is_test and contact.exclude.test_orders:
        return Decision(None, SkipReason.excluded_test_order)
    if order.total_amount is not None and order.total_amount < contact.exclude.min_total:
        return Decision(None, SkipReason.excluded_min_total)
    choice = choose_channel_with(
        lambda channel: book.current(customer.id, channel), customer, config
    )
    if choice.skip is not None:
        return Decision(None, choice.skip)
    if unit_hash(f"sample:{order.external_id}") >= contact.sample_rate:
        return Decision(None, SkipReason.sampled_out)
    if order.purchased_at is not None and within_cap(
        counted, order.purchased_at, contact.frequency_cap
    ):
        return Decision(None, SkipReason.frequency_cap)
    return Decision(choice.channel, None)


def schedule_values(schedule: Schedule, config: OperatorConfig) -> dict[str, object]:
    """The survey columns a schedule fills, as planning writes them."""
    return {
        "anchor_kind": schedule.anchor_kind,
        "anchor_at": schedule.anchor_at,
        "anchor_deadline": schedule.anchor_deadline,
        "delay_seconds": int(schedule.delay.total_seconds()),
        "rule_index": schedule.rule_index,
        "arm": schedule.arm,
        "timezone": schedule.timezone,
        "due_at": schedule.due_at,
        "config_version": config.version,
    }
