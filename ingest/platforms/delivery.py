"""What a shop platform's webhook is to the shared machinery: the stored :class:`Delivery`, what
an adapter maps it to (:class:`Mapped`, with a :class:`Redaction` for more customers to erase),
the :class:`Adapter` itself, and what became of a delivery (:class:`Received`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from config import OperatorConfig
from ingest import apply
from ingest.service import IngestResult

__all__ = ["Adapter", "Delivery", "Mapped", "Received", "Redaction", "Status", "Unmappable"]


class Unmappable(ValueError):
    """The payload cannot be turned into shop events; the message says why (no personal data)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One verified webhook delivery: what the platform sent, as stored raw."""

    platform: str  # the ledger source: "shopify" | "woocommerce"
    delivery_id: str  # the platform's unique id of this delivery
    topic: str
    shop: str  # the shop's domain or site, "" when the platform did not say
    body: Any  # the JSON body, or None when it was not JSON
    received_at: datetime

    @property
    def ledger_id(self) -> str:
        """The ledger's external id: the shop, then the delivery id (a shop's rows share a
        prefix, which is how ``shop/redact`` finds them)."""
        return f"{self.shop[:100]}/{self.delivery_id[:99]}"

    def payload(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "shop": self.shop,
            "delivery_id": self.delivery_id,
            "received_at": self.received_at.isoformat(),
            "body": self.body,
        }

    @classmethod
    def from_payload(cls, platform: str, payload: Mapping[str, Any]) -> Delivery:
        return cls(
            platform=platform,
            delivery_id=str(payload.get("delivery_id") or ""),
            topic=str(payload.get("topic") or ""),
            shop=str(payload.get("shop") or ""),
            body=payload.get("body"),
            received_at=datetime.fromisoformat(str(payload["received_at"])),
        )


@dataclass(frozen=True, slots=True)
class Redaction:
    """More customers a request to erase names, found only when it is applied (the mapping
    reads no database): the customers of ``orders``, and the records whose id starts with
    ``guest_prefix`` holding one of ``emails`` or ``phones`` (normalised, as stored)."""

    orders: tuple[str, ...] = ()
    guest_prefix: str | None = None
    emails: tuple[str, ...] = ()
    phones: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Mapped:
    """What a delivery means: shop events to ingest, in order, or a note of why there are none."""

    events: tuple[dict[str, Any], ...] = ()
    result: str = ""  # said when there are no events ("ignored: status pending")
    erase_shop: bool = False  # shop/redact: erase every customer this shop's deliveries named
    notice: str | None = None  # a line for the operators' log; never personal data
    # customers/redact: a customer.erased is added for each customer it finds
    redaction: Redaction | None = None


@dataclass(frozen=True, slots=True)
class Adapter:
    """A platform: its ledger source, its mapping, and whom a delivery is about."""

    platform: str
    map: Callable[[Delivery, OperatorConfig], Mapped]
    # The shop's customer id a delivery names (for the raw row's subject key), or None. Never
    # raises: it runs before the payload is known to be usable.
    subject: Callable[[Delivery], str | None]

    def __post_init__(self) -> None:
        # Erasure searches these sources' deliveries not applied yet (ingest.apply).
        if self.platform not in apply.PLATFORM_SOURCES:
            raise ValueError(f"{self.platform!r} is not in ingest.apply.PLATFORM_SOURCES")


# "queued": stored, and left to the scheduler's replay (a shop/redact, see handle()).
Status = Literal["applied", "duplicate", "already", "dead_letter", "failed", "queued"]


@dataclass(frozen=True, slots=True)
class Received:
    """What became of a delivery."""

    status: Status
    row_id: int | None = None
    result: str | None = None
    events: tuple[IngestResult, ...] = field(default_factory=tuple)
    dead_letter: int | None = None

    def answer(self) -> dict[str, Any]:
        """The body answered to the platform (ids and statuses only, nothing personal)."""
        out: dict[str, Any] = {"status": self.status, "result": self.result}
        if self.events:
            out["events"] = [{"event_id": r.event_id, "status": r.status} for r in self.events]
        if self.dead_letter is not None:
            out["dead_letter"] = self.dead_letter
        return out
