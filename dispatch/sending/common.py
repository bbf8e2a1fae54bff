"""What every step of sending shares: the outcome of an attempt, the retry backoff, the erasure
check under lock, masked contacts in logs, and the error for a broken invariant."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from channels.base import ChannelName
from channels.masking import mask_email, mask_phone

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
