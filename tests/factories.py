"""Shop events for tests, with explicit defaults that each test overrides."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

_counter = itertools.count(1)


def _iso(at: datetime | str) -> str:
    return at if isinstance(at, str) else at.astimezone(UTC).isoformat()


def purchase(
    order_id: str | None = None,
    customer_id: str = "c-1",
    *,
    at: datetime | str = "2026-11-20T10:00:00Z",
    email: str | None = "ana@example.com",
    phone: str | None = "+40721000111",
    consent: dict[str, Any] | None = None,
    amount: str = "129.90",
    category: str = "electronics",
    country: str = "RO",
    event_id: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    n = next(_counter)
    event: dict[str, Any] = {
        "type": "purchase.completed",
        "event_id": event_id or f"evt-p-{n}",
        "occurred_at": _iso(at),
        "order_id": order_id or f"A-{n}",
        "customer": {
            "id": customer_id,
            "email": email,
            "phone": phone,
            "first_name": "Ana",
            "locale": "ro-RO",
            "timezone": "Europe/Bucharest",
            "country": country,
            "previous_orders": 3,
        },
        "consent": consent
        if consent is not None
        else {
            "email": True,
            "sms": False,
            "source": "checkout-checkbox",
            "text_version": "2026-03",
        },
        "total": {"amount": amount, "currency": "EUR"},
        "items": [{"sku": "TV-55", "category": category, "quantity": 1}],
        "sales_channel": "web",
        "test": False,
    }
    event.update(extra)
    return event


def order_event(
    kind: str,
    order_id: str,
    *,
    at: datetime | str = "2026-11-21T10:00:00Z",
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "type": f"order.{kind}",
        "event_id": event_id or f"evt-o-{next(_counter)}",
        "occurred_at": _iso(at),
        "order_id": order_id,
    }


def consent_event(
    kind: str,
    customer_id: str,
    *,
    at: datetime | str = "2026-11-20T12:00:00Z",
    event_id: str | None = None,
    **channels: bool,
) -> dict[str, Any]:
    """``consent.granted`` / ``consent.revoked``; each channel's value is its consent after the
    event: ``consent_event("revoked", "c-1", email=False)`` revokes email."""
    return {
        "type": f"consent.{kind}",
        "event_id": event_id or f"evt-c-{next(_counter)}",
        "occurred_at": _iso(at),
        "customer": {"id": customer_id},
        "consent": {**channels, "source": "preference-center", "text_version": "2026-03"},
    }


def erased(customer_id: str, *, at: datetime | str = "2026-11-22T10:00:00Z") -> dict[str, Any]:
    return {
        "type": "customer.erased",
        "event_id": f"evt-e-{next(_counter)}",
        "occurred_at": _iso(at),
        "customer": {"id": customer_id},
    }
