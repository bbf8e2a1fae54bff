"""Small readers the adapters' mappings share: a platform's ids, texts, times and amounts as
our shop events want them, raising :class:`Unmappable` with the field's path; :func:`keyed`, the
digest that tells customers apart in an event id without naming them, and the guest ids built
on it; the webhook body, an order's lines and total, as both platforms send them."""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from ingest.contacts import normalise_email, normalise_phone
from ingest.platforms.delivery import Delivery, Unmappable
from models.erasure import subject_key

__all__ = [
    "Body",
    "amount",
    "as_object",
    "given",
    "guest_by_email",
    "guest_by_phone",
    "keyed",
    "line_items",
    "numeric_id",
    "text",
    "timestamp",
    "total",
    "webhook_body",
]

Body = Mapping[str, Any]


def numeric_id(value: object, path: str) -> str:
    """A platform's numeric id as decimal text: ``820982911946154508`` or ``"0820..."`` alike."""
    if isinstance(value, bool):
        raise Unmappable(f"{path}: expected a numeric id, got a boolean")
    if isinstance(value, int) and value > 0:
        return str(value)
    if isinstance(value, str) and value.strip().isdigit() and int(value) > 0:
        return str(int(value))
    if value is None:
        raise Unmappable(f"{path}: missing")
    raise Unmappable(f"{path}: expected a numeric id, got {type(value).__name__}")


def text(value: object, limit: int) -> str | None:
    """A text field, trimmed and cut to ``limit``; ``None`` when absent or blank."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value[:limit] or None


def timestamp(value: object, path: str, *, naive_is_utc: bool = False) -> str:
    """An ISO 8601 time as given; the schema checks it. WooCommerce's ``*_gmt`` fields carry no
    offset (``naive_is_utc``)."""
    if not isinstance(value, str) or not value.strip():
        raise Unmappable(f"{path}: missing")
    value = value.strip()
    if naive_is_utc:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Unmappable(f"{path}: not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            return value + "+00:00"
    return value


def amount(value: object, path: str) -> str:
    """A money amount as the decimal text the schema wants (platforms send strings)."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise Unmappable(f"{path}: missing")
    raise Unmappable(f"{path}: expected a decimal string, got {type(value).__name__}")


def keyed(*parts: str) -> str:
    """A short digest for an event id that must tell customers apart without naming them: the
    first part is a customer id, replaced by its keyed pseudonym before hashing, so the digest
    cannot be reversed by trying ids (the ledger keeps event ids after an erasure)."""
    first, *rest = parts
    material = "\n".join((subject_key(first), *rest))
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def guest_by_email(prefix: str, email: str) -> str:
    """The stable id of a guest (a customer the platform names without an id) by their email
    address: ``prefix`` and a keyed digest of the normalised address."""
    return f"{prefix}{keyed('email:' + (normalise_email(email).value or email))}"


def guest_by_phone(prefix: str, phone: str, country: str | None = None) -> str:
    """The stable id of a guest by their phone number (read in ``country``, when known)."""
    return f"{prefix}{keyed('phone:' + (normalise_phone(phone, country).value or phone))}"


def as_object(value: object) -> Body:
    """A JSON object of the body, or an empty one when the value is anything else."""
    return value if isinstance(value, Mapping) else {}


def webhook_body(delivery: Delivery, topics: Collection[str]) -> Body:
    """The delivery's body, when it is a JSON object and its topic one of ``topics``."""
    if not isinstance(delivery.body, Mapping):
        raise Unmappable("the body is not a JSON object")
    if delivery.topic not in topics:
        raise Unmappable(f"topic {delivery.topic!r} is not taken")
    return delivery.body


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The values that are not ``None`` (an event leaves out what the platform did not say)."""
    return {k: v for k, v in values.items() if v is not None}


def total(body: Body, key: str) -> dict[str, str]:
    """An order's total: the amount under ``key``, in the order's ``currency``."""
    return {"amount": amount(body.get(key), key), "currency": text(body.get("currency"), 3) or ""}


def line_items(body: Body, category: str | None = None) -> list[dict[str, Any]]:
    """An order's ``line_items`` (at most 500): each line's SKU, its category read from the
    line's ``category`` key when one is named, and its quantity."""
    items = []
    for line in body.get("line_items") or ():
        if not isinstance(line, Mapping):
            continue
        item: dict[str, Any] = {"sku": text(line.get("sku"), 64)}
        if category is not None:
            item["category"] = text(line.get(category), 64)
        quantity = line.get("quantity")
        if isinstance(quantity, int) and not isinstance(quantity, bool) and quantity >= 0:
            item["quantity"] = quantity
        items.append(given(item))
    return items[:500]
