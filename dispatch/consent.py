"""Consent and erasure checks shared by the survey domain.

:func:`customer_erased` / :func:`erased_customer` say whether a customer (or a survey's customer)
is erased, read under a share lock of the customer row; :func:`subject_of` gives the keyed
pseudonym stored on raw provider rows, which is where an erasure looks for them;
:func:`consent_granted` is the current-consent rule of ``models.customers.latest_consent`` as
an expression, for a statement that checks it for its own rows (the send's claim).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.elements import ColumnElement

from models import ConsentRecord, Customer, Order, Survey, SurveyState, move
from models.customers import consent_order
from models.erasure import subject_key

_CUSTOMERS = cast(Table, Customer.__table__)
_ERASED_AT = (
    select(_CUSTOMERS.c.id, _CUSTOMERS.c.erased_at)
    .where(_CUSTOMERS.c.id == bindparam("customer_id"))
    .with_for_update(read=True)
)

__all__ = [
    "consent_granted",
    "customer_erased",
    "erased_customer",
    "subject_of",
    "withdraw_if_stopped",
    "withdrawal_reason",
]


def customer_erased(session: Session, customer_id: int | None) -> bool:
    """Whether the customer is erased (or missing), read under a share lock of their row.

    The erasure takes that row ``FOR UPDATE`` before it empties the survey's and messages'
    personal columns, so a writer holding this lock either sees the erasure, or commits first and
    has its personal data emptied by it (SQLite has a single writer anyway)."""
    if customer_id is None:
        return True
    row = session.execute(_ERASED_AT, {"customer_id": customer_id}).first()
    return row is None or row.erased_at is not None


def erased_customer(session: Session, survey_id: int) -> bool:
    """Whether the survey's customer is erased (a missing survey counts as erased); see
    :func:`customer_erased` for the lock."""
    customer_id = session.scalar(select(Survey.customer_id).where(Survey.id == survey_id))
    return customer_erased(session, customer_id)


def consent_granted(
    customer_id: ColumnElement[Any] | InstrumentedAttribute[int],
    channel: ColumnElement[Any] | InstrumentedAttribute[str],
) -> Any:
    """The latest consent record's grant for ``customer_id`` and ``channel`` (columns of the
    enclosing statement), as a scalar subquery: ``NULL`` without any record. The order is
    :func:`models.customers.consent_order`, the one :func:`models.customers.latest_consent`
    uses: latest by effective time, and at the same moment a revocation before a grant."""
    return (
        select(ConsentRecord.granted)
        .where(ConsentRecord.customer_id == customer_id, ConsentRecord.channel == channel)
        .order_by(*consent_order())
        .limit(1)
        .scalar_subquery()
    )


def subject_of(customer: Customer | None) -> str | None:
    """The keyed pseudonym stored for a customer on raw rows (``None`` once erased)."""
    if customer is None or customer.erased_at is not None:
        return None
    return subject_key(customer.external_id)


def withdrawal_reason(order: Order, customer: Customer) -> str | None:
    """Why a survey may no longer go out, whatever the stage (claiming it when due, or right
    before the provider call): its order was cancelled or refunded, or its customer erased."""
    if customer.erased_at is not None:
        return "customer erased"
    if order.cancelled_at is not None:
        return f"order {order.cancel_kind}"
    return None


def withdraw_if_stopped(
    session: Session,
    survey: Survey,
    order: Order,
    customer: Customer,
    *,
    only_from: SurveyState,
    now: datetime,
) -> str | None:
    """End the survey ``withdrawn`` when :func:`withdrawal_reason` says it may not go out;
    returns that reason, or ``None`` when it may go on."""
    reason = withdrawal_reason(order, customer)
    if reason is not None:
        move(
            session,
            survey.id,
            SurveyState.withdrawn,
            reason=reason,
            only_from=[only_from],
            now=now,
            final_reason=reason,
        )
    return reason
