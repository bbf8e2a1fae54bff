"""``[shopify]`` and ``[woocommerce]``: how each shop platform's webhooks become shop events
(which topics or statuses record a purchase, where categories and marketing consent come from)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError

from config.values import ConfigModel, strip_nonempty

__all__ = [
    "ShopifyConfig",
    "ShopifyConsentState",
    "ShopifyPurchaseTopic",
    "WooCommerceConfig",
    "WooCommerceStatus",
]


ShopifyPurchaseTopic = Literal["orders/paid", "orders/create"]
ShopifyConsentState = Literal[
    "subscribed", "pending", "not_subscribed", "unsubscribed", "redacted", "invalid"
]
# A customer in one of these states has said no, or nothing, or their consent was erased: an
# operator cannot make it count as a yes.
_NEVER_CONSENT = ("not_subscribed", "unsubscribed", "redacted", "invalid")
WooCommerceStatus = Literal["pending", "processing", "on-hold", "completed"]


def _unique_nonempty(value: object) -> object:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        if not value:
            raise PydanticCustomError("empty", "must not be empty")
        seen = [v for i, v in enumerate(value) if v in value[:i]]
        if seen:
            raise PydanticCustomError(
                "duplicate", "{value} is listed twice", {"value": repr(seen[0])}
            )
        return tuple(value)
    return value


def _counts_as_consent(states: tuple[str, ...]) -> tuple[str, ...]:
    refused = [state for state in states if state in _NEVER_CONSENT]
    if refused:
        raise PydanticCustomError(
            "consent_state",
            "{value} cannot count as consent (it records a refusal, no answer, or an erasure)",
            {"value": repr(refused[0])},
        )
    return states


def _meta_key(value: str | None) -> str | None:
    return None if value is None else strip_nonempty(value)


class ShopifyConfig(ConfigModel):
    """How Shopify webhooks become shop events (``POST /webhooks/shopify``)."""

    # The order topic(s) that record a purchase; "orders/create" counts an order when it is
    # placed, once its payment is paid, partially paid or authorised.
    purchase_topics: Annotated[
        tuple[ShopifyPurchaseTopic, ...], BeforeValidator(_unique_nonempty)
    ] = ("orders/paid",)
    # The line item field read as an item's category.
    category: Literal["product_type", "vendor"] = "vendor"
    # Marketing consent states (email_marketing_consent / sms_marketing_consent) that count.
    consent_states: Annotated[
        tuple[ShopifyConsentState, ...],
        BeforeValidator(_unique_nonempty),
        AfterValidator(_counts_as_consent),
    ] = ("subscribed",)


class WooCommerceConfig(ConfigModel):
    """How WooCommerce order webhooks become shop events (``POST /webhooks/woocommerce``)."""

    # Order statuses that record the purchase ("completed" also records the fulfilment).
    purchase_statuses: Annotated[
        tuple[WooCommerceStatus, ...], BeforeValidator(_unique_nonempty)
    ] = ("processing", "completed")
    # WooCommerce keeps no marketing consent of its own: the order meta_data key a checkout
    # consent field writes, per channel ("yes", "1", "true" or "on" is a grant).
    email_consent_meta_key: Annotated[str | None, AfterValidator(_meta_key)] = None
    sms_consent_meta_key: Annotated[str | None, AfterValidator(_meta_key)] = None
