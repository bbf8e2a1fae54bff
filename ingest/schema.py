"""The shop's events (CONTRACT §1), validated once for every path in (queue, HTTP, file).

Unknown keys are ignored so the shop can add fields without breaking us; known keys are strict,
and every error names its field path (``customer.phone``, ``total.amount``). Dates must be
plausible: not before 2000-01-01, and not more than a day after the moment the event is taken in
(``now``, passed to :func:`parse_event`).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
EventId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
ShortText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=120)]
CountryCode = Annotated[
    str, StringConstraints(strip_whitespace=True, to_upper=True, pattern=r"^[A-Za-z]{2}$")
]

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
# Shop clocks drift and time zones get mixed up; a day of slack covers both, a year 9999 does not.
MAX_AHEAD = timedelta(days=1)
CENT = Decimal("0.01")


def _plausible_time(value: datetime, info: ValidationInfo) -> datetime:
    now = (info.context or {}).get("now")
    if not isinstance(now, datetime):
        # Not a ValueError on purpose: a missing clock is a bug of the caller, not of the event.
        raise TypeError("validate shop events with parse_event(raw, now=...)")
    if value < EARLIEST:
        raise ValueError("must not be before 2000-01-01T00:00:00Z")
    if value > now + MAX_AHEAD:
        received = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
        raise ValueError(f"must not be more than 1 day after the time of ingest ({received})")
    # One instant, one spelling: "+01:00" and "Z" forms of a time compare and fingerprint equal.
    return value.astimezone(UTC)


EventTime = Annotated[AwareDatetime, AfterValidator(_plausible_time)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


class CustomerIn(_Model):
    id: Id
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    phone: Annotated[str, StringConstraints(max_length=40)] | None = None
    first_name: ShortText | None = None
    locale: Annotated[str, StringConstraints(max_length=35)] | None = None
    timezone: Annotated[str, StringConstraints(max_length=64)] | None = None
    country: CountryCode | None = None
    previous_orders: Annotated[int, Field(ge=0, le=1_000_000)] | None = None

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value


class ConsentIn(_Model):
    email: bool | None = None
    sms: bool | None = None
    source: ShortText | None = None
    text_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    captured_at: EventTime | None = None

    def channels(self) -> dict[str, bool]:
        return {ch: v for ch, v in (("email", self.email), ("sms", self.sms)) if v is not None}

    def flagged(self) -> list[str]:
        return [ch for ch, value in self.channels().items() if value]


class MoneyIn(_Model):
    amount: Annotated[Decimal, Field(ge=0, le=Decimal("1e11"), max_digits=14, decimal_places=2)]
    currency: Annotated[str, StringConstraints(to_upper=True, pattern=r"^[A-Za-z]{3}$")]

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        # Money arrives as a string ("129.90"); a float has already lost its cents' exactness.
        if isinstance(value, float):
            raise ValueError('give the amount as a string, e.g. "129.90"')
        return value

    @field_validator("amount")
    @classmethod
    def _in_cents(cls, value: Decimal) -> Decimal:
        # "129.9", "129.90" and "1.299E+2" are one amount; keep one form of it (adding 0 also
        # turns a "-0" into "0").
        return (value + 0).quantize(CENT)


class ItemIn(_Model):
    sku: Annotated[str, StringConstraints(max_length=64)] | None = None
    category: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None
    quantity: Annotated[int, Field(ge=0, le=1_000_000)] = 1


class _EventBase(_Model):
    event_id: EventId
    occurred_at: EventTime


class PurchaseCompleted(_EventBase):
    type: Literal["purchase.completed"]
    order_id: Id
    customer: CustomerIn
    consent: ConsentIn | None = None
    total: MoneyIn
    items: Annotated[list[ItemIn], Field(max_length=500)] = []
    sales_channel: Annotated[str, StringConstraints(max_length=32)] | None = None
    test: bool = False


class OrderEvent(_EventBase):
    type: Literal["order.fulfilled", "order.delivered", "order.cancelled", "order.refunded"]
    order_id: Id


class _CustomerRef(_Model):
    id: Id


class ConsentEvent(_EventBase):
    type: Literal["consent.granted", "consent.revoked"]
    customer: CustomerIn
    consent: ConsentIn

    @model_validator(mode="after")
    def _has_channel(self) -> ConsentEvent:
        if not self.consent.flagged():
            raise ValueError(
                f"consent: name the channels this {self.type} applies to, e.g. "
                '{"email": true} (email or sms set to true)'
            )
        return self


class CustomerErased(_EventBase):
    type: Literal["customer.erased"]
    customer: _CustomerRef


ShopEvent = Annotated[
    PurchaseCompleted | OrderEvent | ConsentEvent | CustomerErased, Field(discriminator="type")
]
EVENT_TYPES = (
    "purchase.completed",
    "order.fulfilled",
    "order.delivered",
    "order.cancelled",
    "order.refunded",
    "consent.granted",
    "consent.revoked",
    "customer.erased",
)

_adapter: TypeAdapter[ShopEvent] = TypeAdapter(ShopEvent)


class EventRejected(ValueError):
    """A bad event. ``errors`` holds one ``field.path: reason`` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def parse_event(
    raw: Any, *, now: datetime
) -> PurchaseCompleted | OrderEvent | ConsentEvent | CustomerErased:
    """Validate one raw event (a dict from JSON) received at ``now``, or raise
    :class:`EventRejected`."""
    if not isinstance(raw, dict):
        raise EventRejected([f"(event): expected a JSON object, got {type(raw).__name__}"])
    kind = raw.get("type")
    if kind not in EVENT_TYPES:
        raise EventRejected([f"type: must be one of {', '.join(EVENT_TYPES)}; got {kind!r}"])
    try:
        return _adapter.validate_python(raw, context={"now": now})
    except ValidationError as exc:
        raise EventRejected(_describe(exc)) from None


def fingerprint(event: _EventBase) -> str:
    """SHA-256 of the validated event in canonical JSON: what the event means, not how it was
    written. Key order, white space, unknown keys, defaults written out or left out, "129.9" for
    "129.90" and the offset a time was given in do not change it; any known field's value does.
    """
    canonical = json.dumps(
        event.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False, include_input=False):
        # The first location element is the discriminator tag; drop it.
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in EVENT_TYPES:
            loc = loc[1:]
        path = ".".join(loc) or "(event)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {msg}")
    return lines


def event_id_of(raw: Any) -> str | None:
    """The event id of a raw event, if it has a usable one (for per-item answers)."""
    if isinstance(raw, dict):
        value = raw.get("event_id")
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None


def occurred(event: _EventBase) -> datetime:
    return event.occurred_at
