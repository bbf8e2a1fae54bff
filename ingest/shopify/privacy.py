"""Shopify's mandatory privacy topics, beyond what the mapping turns into events.

- ``customers/redact``: a ``customer.erased`` event for each record of the person: the customer
  of the id, the ``shopify-guest:`` records holding the request's email address or phone number,
  and the customers of the orders in ``orders_to_redact`` (see :mod:`ingest.shopify.mapping`),
  each through the one erasure (``ingest.erasure.apply_erasure``). The stored request is keyed to
  no one, so an erasure of the customer arriving first does not empty it before it is applied.
- ``shop/redact`` (48 hours after the shop uninstalled the app): every customer whose data came
  through this shop's webhooks is erased. The shop is known from ``X-Shopify-Shop-Domain``,
  which prefixes every stored delivery's ledger id; the customers from the keyed pseudonyms on
  those rows (``ingest.platforms.erase_shop_customers``). Customers that came only through
  ``POST /v1/events`` or another shop are left alone. The request is stored and answered at
  once; the scheduler's replay carries it out, a bounded number of customers a pass, and then
  deletes the shop's dead letters (whoever they name) and empties its stored deliveries, those
  not applied yet included (closed as ``erased``). Interrupted, it goes on where it stopped.
- ``customers/data_request``: nothing to apply; the request is stored (the raw webhook row,
  keyed to the customer, so erasure removes it and ``customer export`` shows it) and a log line
  without personal data says a request came. :func:`data_requests` lists the requests still
  holding their payload, with the customer's id, for the operator to answer with
  ``nps-dispatch customer export ID``. Like every raw payload it is emptied after the retention
  period (30 days, Shopify's deadline for the answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ingest.shopify.mapping import PLATFORM
from models import InboundEvent

__all__ = ["DataRequest", "data_requests"]


@dataclass(frozen=True, slots=True)
class DataRequest:
    row_id: int
    received_at: datetime
    shop: str
    request_id: str | None
    customer_id: str | None
    orders_requested: tuple[str, ...]


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _request(row: InboundEvent) -> DataRequest:
    payload = _dict(row.payload)
    body = _dict(payload.get("body"))
    customer = _dict(body.get("customer"))
    request = _dict(body.get("data_request"))
    orders = body.get("orders_requested")
    customer_id = customer.get("id")
    request_id = request.get("id")
    return DataRequest(
        row_id=row.id,
        received_at=row.received_at,
        shop=str(payload.get("shop") or ""),
        request_id=None if request_id is None else str(request_id),
        customer_id=None if customer_id is None else str(customer_id),
        orders_requested=tuple(str(o) for o in orders) if isinstance(orders, list) else (),
    )


def data_requests(factory: sessionmaker[Session], *, limit: int = 1000) -> list[DataRequest]:
    """Stored ``customers/data_request`` deliveries, oldest first (those whose payload was not
    yet emptied by erasure or retention)."""
    with factory() as session:
        rows = session.scalars(
            select(InboundEvent)
            .where(
                InboundEvent.source == PLATFORM,
                InboundEvent.event_type == "customers/data_request",
                InboundEvent.payload.is_not(None),
            )
            .order_by(InboundEvent.id)
            .limit(limit)
        ).all()
        return [_request(row) for row in rows]
