"""The shop's events, one model each, told apart by ``type``: what each carries and the
example the OpenAPI document shows. The two consent events are built from one definition."""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Optional, TypeVar, Union, cast

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
)

from ingest.schema.fields import (
    ConsentIn,
    CustomerIn,
    CustomerRef,
    EventId,
    EventTime,
    Id,
    ItemIn,
    Model,
    MoneyIn,
    rule,
)

__all__ = [
    "EVENT_MODELS",
    "EVENT_TYPES",
    "EVENT_UNION",
    "ConsentEvent",
    "ConsentGranted",
    "ConsentRevoked",
    "CustomerErased",
    "EventBase",
    "OrderEvent",
    "PurchaseCompleted",
    "ShopEvent",
]

_M = TypeVar("_M", bound=Model)


class EventBase(Model):
    event_id: EventId = Field(
        description="the idempotency key: the same event twice has one effect"
    )
    occurred_at: EventTime = Field(description="ISO 8601 with an offset")


def _example(**event: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [event]})


class PurchaseCompleted(EventBase):
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


class OrderEvent(EventBase):
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


class ConsentEvent(EventBase):
    """What both consent events share; parsed as :class:`ConsentGranted` or
    :class:`ConsentRevoked`."""

    type: Literal["consent.granted", "consent.revoked"]
    customer: CustomerIn
    consent: ConsentIn

    @field_validator("consent")
    @classmethod
    def _names_a_channel(cls, value: ConsentIn) -> ConsentIn:
        if not value.channels():
            raise rule(
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
            raise rule(
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


class CustomerErased(EventBase):
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
EVENT_MODELS: tuple[type[EventBase], ...] = (
    PurchaseCompleted,
    OrderEvent,
    ConsentGranted,
    ConsentRevoked,
    CustomerErased,
)

ShopEvent = PurchaseCompleted | OrderEvent | ConsentEvent | CustomerErased
# The models told apart by ``type`` (a type checker sees the built consent models as their base).
EVENT_UNION: Any = Annotated[Union[EVENT_MODELS], Field(discriminator="type")]  # noqa: UP007
