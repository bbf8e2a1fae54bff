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
"""

from __future__ import annotations

import hashlib
import json
import types
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, cast

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
    WithJsonSchema,
    field_validator,
)
from pydantic_core import PydanticCustomError

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


def _rule(code: str, reason: str) -> PydanticCustomError:
    """A broken rule of ours, under a stable code (the reason travels in the context, so that a
    brace in it is never read as a placeholder)."""
    return PydanticCustomError(code, "{reason}", {"reason": reason})


def _plausible_time(value: datetime, info: ValidationInfo) -> datetime:
    now = (info.context or {}).get("now")
    if not isinstance(now, datetime):
        # Not a ValueError on purpose: a missing clock is a bug of the caller, not of the event.
        raise TypeError("validate shop events with parse_event(raw, now=...)")
    if value < EARLIEST:
        raise _rule("time_out_of_range", "must not be before 2000-01-01T00:00:00Z")
    if value > now + MAX_AHEAD:
        received = now.astimezone(UTC).isoformat().replace("+00:00", "Z")
        raise _rule(
            "time_out_of_range",
            f"must not be more than 1 day after the time of ingest ({received})",
        )
    # One instant, one spelling: "+01:00" and "Z" forms of a time compare and fingerprint equal.
    return value.astimezone(UTC)


EventTime = Annotated[AwareDatetime, AfterValidator(_plausible_time)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)


_M = TypeVar("_M", bound=_Model)


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
            raise _rule("unknown_time_zone", f"unknown IANA time zone {value!r}") from None
        return value


class ConsentIn(_Model):
    """Consent evidence. ``email`` and ``sms`` are each channel's state after the event (omitted or
    ``null``: that channel is not concerned)."""

    email: bool | None = None
    sms: bool | None = None
    source: ShortText | None = None
    text_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    captured_at: EventTime | None = None

    def channels(self) -> dict[str, bool]:
        return {ch: v for ch, v in (("email", self.email), ("sms", self.sms)) if v is not None}


class MoneyIn(_Model):
    amount: Annotated[
        Decimal,
        Field(ge=0, le=Decimal("1e11"), max_digits=14, decimal_places=2),
        WithJsonSchema(
            {
                "type": "string",
                "pattern": r"^[0-9]{1,12}(\.[0-9]{1,2})?$",
                "description": 'a decimal amount as a string, e.g. "129.90" (a JSON number '
                "would already have lost its cents' exactness)",
            }
        ),
    ]
    currency: Annotated[str, StringConstraints(to_upper=True, pattern=r"^[A-Za-z]{3}$")]

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        # Money arrives as a string ("129.90"); a float has already lost its cents' exactness.
        if isinstance(value, float):
            raise _rule("amount_not_string", 'give the amount as a string, e.g. "129.90"')
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
    event_id: EventId = Field(
        description="the idempotency key: the same event twice has one effect"
    )
    occurred_at: EventTime = Field(description="ISO 8601 with an offset")


def _example(**event: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [event]})


class PurchaseCompleted(_EventBase):
    """Records the order, consent evidence and contacts; plans one survey or records why not."""

    model_config = _example(
        type="purchase.completed",
        event_id="evt_01HX7Q",
        occurred_at="2026-11-20T10:04:00Z",
        order_id="A-1001",
        customer={
            "id": "c-42",
            "email": "ana@example.com",
            "phone": "+40721000111",
            "first_name": "Ana",
            "locale": "ro-RO",
            "timezone": "Europe/Bucharest",
            "country": "RO",
            "previous_orders": 3,
        },
        consent={
            "email": True,
            "sms": False,
            "source": "checkout-checkbox",
            "text_version": "2026-03",
            "captured_at": "2026-11-20T10:03:51Z",
        },
        total={"amount": "129.90", "currency": "EUR"},
        items=[{"sku": "TV-55", "category": "electronics", "quantity": 1}],
        sales_channel="web",
        test=False,
    )

    type: Literal["purchase.completed"]
    order_id: Id
    customer: CustomerIn
    consent: ConsentIn | None = None
    total: MoneyIn
    items: Annotated[list[ItemIn], Field(max_length=500)] = []
    sales_channel: Annotated[str, StringConstraints(max_length=32)] | None = None
    test: bool = False


class OrderEvent(_EventBase):
    """Fulfilment and delivery are anchor times; a cancellation or refund withdraws an unsent
    survey. Any of them may arrive before the purchase."""

    model_config = _example(
        type="order.delivered",
        event_id="evt_01HX9D",
        occurred_at="2026-11-23T15:30:00Z",
        order_id="A-1001",
    )

    type: Literal["order.fulfilled", "order.delivered", "order.cancelled", "order.refunded"]
    order_id: Id


class CustomerRef(_Model):
    id: Id


class ConsentEvent(_EventBase):
    """What both consent events share; parsed as :class:`ConsentGranted` or
    :class:`ConsentRevoked`."""

    type: Literal["consent.granted", "consent.revoked"]
    customer: CustomerIn
    consent: ConsentIn

    @field_validator("consent")
    @classmethod
    def _names_a_channel(cls, value: ConsentIn) -> ConsentIn:
        if not value.channels():
            raise _rule(
                "consent_channel_required",
                "name at least one channel (email or sms) with its consent after the event",
            )
        return value


def _model(name: str, base: type[_M], doc: str | None, **namespace: Any) -> type[_M]:
    """A subclass of ``base`` named ``name`` (the name the OpenAPI document shows)."""
    namespace.update(__module__=__name__, __qualname__=name, __doc__=doc)
    return cast("type[_M]", types.new_class(name, (base,), {}, lambda ns: ns.update(namespace)))


def _consent_event(
    name: str, doc: str, *, granted: bool, example: dict[str, Any]
) -> type[ConsentEvent]:
    """The model of ``consent.granted`` (``granted``: each channel given is ``true``) or
    ``consent.revoked`` (each ``false``), with its consent evidence (``GrantIn``, ``RevokeIn``).
    A channel's other value contradicts the event type and is refused at its path, so that a
    ``true`` meant as "yes, revoke" can never be read either way."""
    said, verb, wanted, other = (
        ("granted", "grant", "true", "false") if granted else ("revoked", "revoke", "false", "true")
    )
    event_type = f"consent.{said}"

    def after(value: bool) -> bool:
        if value is not granted:
            raise _rule(
                "consent_contradicts_type",
                f"{other} contradicts {event_type}: a channel's value is its consent after the "
                f"event, so use {wanted} to {verb} it (or leave the channel out)",
            )
        return value

    state = Annotated[
        bool,
        AfterValidator(after),
        WithJsonSchema(
            {"type": "boolean", "const": granted, "description": f"{said} after the event"}
        ),
    ]
    channel = Optional[state]  # noqa: UP045 (a value, not an annotation)
    evidence = _model(
        "GrantIn" if granted else "RevokeIn",
        ConsentIn,
        None,
        __annotations__={"email": channel, "sms": channel},
        email=None,
        sms=None,
    )
    return _model(
        name,
        ConsentEvent,
        doc,
        __annotations__={"type": Literal[event_type], "consent": evidence},
        model_config=_example(type=event_type, **example),
    )


ConsentGranted = _consent_event(
    "ConsentGranted",
    "Grants the channels given (each ``true``).",
    granted=True,
    example={
        "event_id": "evt_01HXA2",
        "occurred_at": "2026-11-21T08:00:00Z",
        "customer": {"id": "c-42"},
        "consent": {"sms": True, "source": "preference-center", "text_version": "2026-03"},
    },
)
ConsentRevoked = _consent_event(
    "ConsentRevoked",
    "Revokes the channels given (each ``false``); every unsent survey on them stops.",
    granted=False,
    example={
        "event_id": "evt_01HXB7",
        "occurred_at": "2026-11-22T19:12:00Z",
        "customer": {"id": "c-42"},
        "consent": {"email": False, "source": "preference-center"},
    },
)


class CustomerErased(_EventBase):
    """Erases the customer's personal data; anonymised counts survive."""

    model_config = _example(
        type="customer.erased",
        event_id="evt_01HXC1",
        occurred_at="2026-11-25T09:00:00Z",
        customer={"id": "c-42"},
    )

    type: Literal["customer.erased"]
    customer: CustomerRef


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
EVENT_MODELS: tuple[type[_EventBase], ...] = (
    PurchaseCompleted,
    OrderEvent,
    ConsentGranted,
    ConsentRevoked,
    CustomerErased,
)

ShopEvent = PurchaseCompleted | OrderEvent | ConsentEvent | CustomerErased
# The models told apart by ``type`` (a type checker sees the built consent models as their base).
_EVENT_UNION: Any = Annotated[Union[EVENT_MODELS], Field(discriminator="type")]  # noqa: UP007
_adapter: TypeAdapter[ShopEvent] = TypeAdapter(_EVENT_UNION)


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem of an event: a stable ``code``, the reason (``message``) and the field path
    (``param``; ``None`` for the event as a whole)."""

    code: str
    message: str
    param: str | None = None

    def line(self) -> str:
        return f"{self.param or '(event)'}: {self.message}"

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "param": self.param}


class EventRejected(ValueError):
    """A bad event. ``errors`` holds one :class:`FieldError` per problem; the message is their
    ``field.path: reason`` lines joined by ``; ``."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        self.lines = [error.line() for error in errors]
        super().__init__("; ".join(self.lines))


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


# Pydantic's error types, folded into the few codes a shop's client needs to tell apart. Our own
# rules raise their codes directly (see ``_rule``).
_CODES = {
    "missing": "required",
    "literal_error": "invalid_choice",
    "enum": "invalid_choice",
    "union_tag_invalid": "invalid_choice",
    "string_pattern_mismatch": "invalid_format",
    "timezone_aware": "invalid_format",
    "timezone_naive": "invalid_format",
    "too_long": "out_of_range",
    "too_short": "out_of_range",
    "string_too_long": "out_of_range",
    "string_too_short": "out_of_range",
    "greater_than": "out_of_range",
    "greater_than_equal": "out_of_range",
    "less_than": "out_of_range",
    "less_than_equal": "out_of_range",
    "decimal_max_digits": "out_of_range",
    "decimal_max_places": "out_of_range",
    "decimal_whole_digits": "out_of_range",
}
OWN_CODES = frozenset(
    {
        "time_out_of_range",
        "unknown_time_zone",
        "amount_not_string",
        "consent_channel_required",
        "consent_contradicts_type",
    }
)


def _code(kind: str) -> str:
    if kind in OWN_CODES:
        return kind
    if kind in _CODES:
        return _CODES[kind]
    if kind.endswith("_type"):
        return "invalid_type"
    if kind.endswith("_parsing"):
        return "invalid_format"
    return "invalid_value"


def _describe(exc: ValidationError) -> list[FieldError]:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        # The first location element is the discriminator tag; drop it.
        loc = [str(p) for p in err["loc"]]
        if loc and loc[0] in EVENT_TYPES:
            loc = loc[1:]
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(FieldError(_code(err["type"]), msg, ".".join(loc) or None))
    return problems


def event_id_of(raw: Any) -> str | None:
    """The event id of a raw event, if it has a usable one (for per-item answers)."""
    if isinstance(raw, dict):
        value = raw.get("event_id")
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return None


def occurred(event: _EventBase) -> datetime:
    return event.occurred_at
