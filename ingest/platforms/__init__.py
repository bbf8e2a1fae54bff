"""Shop platforms' webhooks (Shopify, WooCommerce): a verified delivery in, shop events out.

Each platform's adapter (``ingest/shopify``, ``ingest/woocommerce``) verifies its signature and
maps its payload to our shop events (``ingest/schema.py``). What they share is here, the same
four steps as the provider webhooks of ``dispatch/responses/``:

1. **Store** the delivery raw in the inbound ledger under (platform, shop/delivery id), with the
   keyed pseudonym of the customer it names (``subject_key``): a redelivery is a duplicate and
   changes nothing, and an erasure finds the row before it is even applied.
2. **Map** the stored payload to events (each adapter's pure ``map``). A payload that cannot be
   mapped becomes a dead letter with the reason, and the platform is answered 200: sending the
   same payload again would not help, and a platform that sees errors retries, then disables the
   webhook.
3. **Ingest** the events with ``ingest_in_session``, each in its own savepoint, in one
   transaction that holds the raw row: the same validation, ledger, idempotency and per-event
   outcomes as ``POST /v1/events``. Event ids are derived from the platform's resource ids, so
   the same order seen twice (a redelivery under a new id, ``orders/create`` then
   ``orders/paid``) is a duplicate. An event the schema rejects is a dead letter too. An error on
   our side keeps the raw row unapplied (``attempts``, ``retry_at``, the error) and is answered
   500, so the platform sends it again; :func:`replay_unhandled` applies it again meanwhile.
4. **Finish**: ``handled_at`` and the result; the payload stays only while the row is tied to a
   customer who is not erased (where erasure, export and the retention pruning find it).

A ``shop/redact`` (erase everything of a shop) may take minutes: it is stored and answered 200
``queued`` at once, and carried out by the scheduler's replay, a bounded number of customers a
pass, the stored request staying unhandled until the last pass (see :func:`handle`).

Event ids never hold a customer's id: the ledger keeps event ids after an erasure.

Its parts: :mod:`.delivery` (the delivery, the mapping's result, the adapter), :mod:`.fields`
(the readers the adapters' mappings share), :mod:`.receive` (store, then apply), :mod:`.ledger`
(the stored row's bookkeeping and dead letters), :mod:`.redact` (privacy requests and the
erasure of a shop), :mod:`.replay` (applying again what did not apply).
"""

from __future__ import annotations

from ingest.platforms.delivery import (
    Adapter,
    Delivery,
    Mapped,
    Received,
    Redaction,
    Status,
    Unmappable,
)
from ingest.platforms.fields import (
    Body,
    amount,
    as_object,
    given,
    guest_by_email,
    guest_by_phone,
    keyed,
    line_items,
    numeric_id,
    text,
    timestamp,
    total,
    webhook_body,
)
from ingest.platforms.receive import handle, receive
from ingest.platforms.redact import (
    ERASE_BATCH,
    SHOP_ERASE_LEASE,
    SHOP_ERASE_PER_PASS,
    ShopErasure,
    erase_shop_customers,
)
from ingest.platforms.replay import replay_dead_letter, replay_unhandled

__all__ = [
    "ERASE_BATCH",
    "SHOP_ERASE_LEASE",
    "SHOP_ERASE_PER_PASS",
    "Adapter",
    "Body",
    "Delivery",
    "Mapped",
    "Received",
    "Redaction",
    "ShopErasure",
    "Status",
    "Unmappable",
    "amount",
    "as_object",
    "erase_shop_customers",
    "given",
    "guest_by_email",
    "guest_by_phone",
    "handle",
    "keyed",
    "line_items",
    "numeric_id",
    "receive",
    "replay_dead_letter",
    "replay_unhandled",
    "text",
    "timestamp",
    "total",
    "webhook_body",
]
