"""The shop's events (the README's "Events" section lists them), validated once whichever way
they came in (queue, HTTP, file).

Unknown keys are ignored so the shop can add fields without breaking us; known keys are strict,
and every error names its field path (``customer.phone``, ``total.amount``). Dates must be
plausible: not before 2000-01-01, and not more than a day after the moment the event is taken in
(``now``, passed to :func:`parse_event`).

A consent event gives each channel's state *after* the event: ``consent.revoked`` with
``{"email": false}`` revokes email, ``consent.granted`` with ``{"sms": true}`` grants SMS. A value
that contradicts the event type is refused at its path (``consent.email``), so that a ``true``
meant as "yes, revoke" can never be read either way.

Each problem of a rejected event is a :class:`FieldError`: a stable ``code``, the reason, and the
field path. Codes: ``required``, ``invalid_type``, ``invalid_format``, ``invalid_choice``,
``out_of_range``, ``invalid_value``, and our own rules' ``time_out_of_range``,
``unknown_time_zone``, ``amount_not_string``, ``consent_channel_required``,
``consent_contradicts_type``.

Its parts: :mod:`.fields` (field types and the models events are made of), :mod:`.events` (the
event models), :mod:`.errors` (what a rejected event is told).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ingest.schema.errors import OWN_CODES, EventRejected, FieldError, describe
from ingest.schema.events import (
    EVENT_MODELS,
    EVENT_TYPES,
    EVENT_UNION,
    ConsentEvent,
    ConsentGranted,
    ConsentRevoked,
    CustomerErased,
    EventBase,
    OrderEvent,
    PurchaseCompleted,
    ShopEvent,
)
from ingest.schema.fields import (
    EARLIEST,
    MAX_AHEAD,
    ConsentIn,
    CustomerIn,
    CustomerRef,
    ItemIn,
    MoneyIn,
)

__all__ = [
    "EARLIEST",
    "EVENT_MODELS",
    "EVENT_TYPES",
    "MAX_AHEAD",
    "OWN_CODES",
    "ConsentEvent",
    "ConsentGranted",
    "ConsentIn",
    "ConsentRevoked",
    "CustomerErased",
    "CustomerIn",
    "CustomerRef",
    "EventRejected",
    "FieldError",
    "ItemIn",
    "MoneyIn",
    "OrderEvent",
    "PurchaseCompleted",
    "ShopEvent",
    "event_id_of",
    "fingerprint",
    "occurred",
    "parse_event",
]

_adapter: TypeAdapter[ShopEvent] = TypeAdapter(EVENT_UNION)


def parse_event(raw: Any, *, now: datetime) -> ShopEvent:
    """Validate one raw event (a dict from JSON) received at ``now``, or raise
    :class:`EventRejected`."""
    if not isinstance(raw, dict):
        got = type(raw).__name__
        raise EventRejected([FieldError("invalid_type", f"expected a JSON object, got {got}")])
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        raise EventRejected(
            [
                FieldError(
                    "required" if kind is None else "invalid_choice",
                    f"must be one of {', '.join(EVENT_TYPES)}; got {kind!r}",
                    "type",
                )
            ]
        )
    try:
        return _adapter.validate_python(raw, context={"now": now})
    except ValidationError as exc:
        raise EventRejected(describe(exc)) from None


def fingerprint(event: EventBase) -> str:
    """SHA-256 of the validated event in canonical JSON: what the event means, not how it was
    written. Key order, white space, unknown keys, defaults written out or left out, "129.9" for
    "129.90" and the offset a time was given in do not change it; any known field's value does.
    """
    canonical = json.dumps(
        event.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def event_id_of(raw: Any) -> str | None:
    """The event id of a raw event, if it has a usable one (for per-item answers)."""
    if isinstance(raw, dict):
        value = raw.get("event_id")
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None


def occurred(event: EventBase) -> datetime:
    return event.occurred_at
