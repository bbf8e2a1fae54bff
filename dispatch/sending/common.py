"""What every step of sending shares: the outcome of an attempt, the retry backoff, the erasure
check under lock, masked contacts in logs, and the error for a broken invariant."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from channels.base import ChannelName
from channels.masking import mask_email, mask_phone
from models import Customer, Survey

# One logger for the whole send path, whichever module of it speaks.
log = logging.getLogger("dispatch.sending")

MAX_SEND_ATTEMPTS = 8
BASE_BACKOFF = timedelta(seconds=30)
MAX_BACKOFF = timedelta(hours=1)


class SendInvariantError(RuntimeError):
    """A row a send depends on is missing or inconsistent (a survey without its order or
    customer, a claimed invitation without a contact): a fault of ours, never a provider's
    answer. The transaction that found it is rolled back."""


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What a send attempt did; ``requeue`` asks the caller to enqueue the survey again now."""

    state: str
    detail: str
    requeue: bool = False


def backoff(attempt: int, retry_after: float | None) -> timedelta:
    if retry_after is not None:
        return max(timedelta(seconds=retry_after), timedelta(seconds=1))
    factor: int = 2 ** max(attempt - 1, 0)
    return min(BASE_BACKOFF * factor, MAX_BACKOFF)


def masked(channel: str, contact: str) -> str:
    return mask_email(contact) if channel == ChannelName.email else mask_phone(contact)


def erased_customer(session: Session, survey_id: int) -> bool:
    """Whether the survey's customer is erased, read under a share lock of the customer row.

    The erasure takes that row ``FOR UPDATE`` before it empties the survey's and messages'
    personal columns, so a writer holding this lock either sees the erasure, or commits first and
    has its personal data emptied by it (SQLite has a single writer anyway)."""
    customer_id = session.scalar(select(Survey.customer_id).where(Survey.id == survey_id))
    if customer_id is None:
        return True
    row = session.execute(
        select(Customer.id, Customer.erased_at)
        .where(Customer.id == customer_id)
        .with_for_update(read=True)
    ).first()
    return row is None or row.erased_at is not None
