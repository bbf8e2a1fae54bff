"""A simulated shop and its customers, for `nps-dispatch demo` and the benchmarks.

The events are realistic on purpose: mixed consent, invalid phone numbers and emails, repeat
buyers, events sent twice, cancellations, and deliveries that arrive before their purchase.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

CATEGORIES = ["electronics", "fashion", "home", "books", "toys"]
# (country, mobile prefix, digits after it, locale, zone): valid mobile numbers by construction.
COUNTRIES = [
    ("RO", "+4072", 7, "ro-RO", "Europe/Bucharest"),
    ("DE", "+49151", 8, "de-DE", "Europe/Berlin"),
    ("FR", "+336", 8, "fr-FR", "Europe/Paris"),
    ("GB", "+447911", 6, "en-GB", "Europe/London"),
]
FIRST_NAMES = ["Ana", "Jonas", "Claire", "Oliver", "Ioana", "Lena", "Hugo", "Mia"]


@dataclass
class SimulatedCustomer:
    id: str
    first_name: str
    email: str | None
    phone: str | None
    country: str
    locale: str
    timezone: str
    consent_email: bool
    consent_sms: bool
    previous_orders: int
    # Hidden truth for later stages of the demo: how they would answer and whether they would.
    loyalty: float = 0.0


@dataclass
class SimulatedShop:
    seed: int = 7
    start: datetime = field(default_factory=lambda: datetime.now(UTC))
    rng: random.Random = field(init=False)
    customers: list[SimulatedCustomer] = field(default_factory=list)
    _event_seq: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _event_id(self) -> str:
        self._event_seq += 1
        return f"sim-{self.seed}-{self._event_seq:06d}"

    def _customer(self, index: int) -> SimulatedCustomer:
        rng = self.rng
        country, prefix, length, locale, tz = rng.choice(COUNTRIES)
        digits = "".join(str(rng.randrange(10)) for _ in range(length))
        phone: str | None = prefix + digits
        if rng.random() < 0.07:
            phone = "+00 123"  # not a phone number at all
        elif rng.random() < 0.1:
            phone = None
        email: str | None = f"customer{index}@example.com"
        if rng.random() < 0.04:
            email = f"customer{index}@@example"  # invalid
        repeat = rng.random() < 0.35
        return SimulatedCustomer(
            id=f"sim-c-{index}",
            first_name=rng.choice(FIRST_NAMES),
            email=email,
            phone=phone,
            country=country,
            locale=locale,
            timezone=tz,
            consent_email=rng.random() < 0.75,
            consent_sms=rng.random() < 0.45,
            previous_orders=rng.randint(1, 12) if repeat else 0,
            loyalty=rng.gauss(0.6 if repeat else 0.0, 1.0),
        )

    def events(self, purchases: int) -> list[dict[str, Any]]:
        """The event stream of ``purchases`` orders, in the order the shop would send them."""
        rng = self.rng
        stream: list[tuple[datetime, dict[str, Any]]] = []
        pool_size = max(1, int(purchases * 1.5))
        self.customers = [self._customer(i) for i in range(pool_size)]
        for n in range(purchases):
            customer = rng.choice(self.customers)
            bought = self.start + timedelta(milliseconds=n * 10)
            order_id = f"sim-o-{self.seed}-{n}"
            category = rng.choice(CATEGORIES)
            amount = round(rng.lognormvariate(4.0, 0.8), 2)
            purchase = {
                "type": "purchase.completed",
                "event_id": self._event_id(),
                "occurred_at": bought.isoformat(),
                "order_id": order_id,
                "customer": {
                    "id": customer.id,
                    "email": customer.email,
                    "phone": customer.phone,
                    "first_name": customer.first_name,
                    "locale": customer.locale,
                    "timezone": customer.timezone,
                    "country": customer.country,
                    "previous_orders": customer.previous_orders,
                },
                "consent": {
                    "email": customer.consent_email,
                    "sms": customer.consent_sms,
                    "source": "checkout-checkbox",
                    "text_version": "2026-03",
                    "captured_at": bought.isoformat(),
                },
                "total": {"amount": f"{amount:.2f}", "currency": "EUR"},
                "items": [
                    {"sku": f"SKU-{rng.randrange(999)}", "category": category, "quantity": 1}
                ],
                "sales_channel": rng.choice(["web", "web", "app"]),
                "test": rng.random() < 0.02,
            }
            delivered = {
                "type": "order.delivered",
                "event_id": self._event_id(),
                "occurred_at": (bought + timedelta(seconds=1)).isoformat(),
                "order_id": order_id,
            }
            roll = rng.random()
            if roll < 0.08:
                stream.append((bought, purchase))
                stream.append(
                    (
                        bought + timedelta(milliseconds=1),
                        {
                            "type": rng.choice(["order.cancelled", "order.refunded"]),
                            "event_id": self._event_id(),
                            "occurred_at": (bought + timedelta(milliseconds=500)).isoformat(),
                            "order_id": order_id,
                        },
                    )
                )
            elif roll < 0.15:
                # The carrier's event reaches us before the shop's purchase event.
                stream.append((bought - timedelta(milliseconds=5), delivered))
                stream.append((bought, purchase))
            else:
                stream.append((bought, purchase))
                if roll < 0.9:
                    stream.append((bought + timedelta(milliseconds=2), delivered))
            if rng.random() < 0.06:
                stream.append((bought + timedelta(milliseconds=3), dict(purchase)))  # sent twice
        stream.sort(key=lambda pair: pair[0])
        return [event for _, event in stream]
