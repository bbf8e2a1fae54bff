"""Sending one survey invitation: pick up, wait, claim and re-check, send, record. Never twice,
never without consent, never silently lost.

The order of steps is the product's promise:

1. **Pick up** the ``queued`` row: a duplicate queue message finds it in another state and does
   nothing. Its ``queued_at`` is a lease against the stuck-queue sweep, renewed when it has run
   for more than 30 seconds.
2. **Wait** for a slot of the channel's rate limit, the row still ``queued``: a backlog of waits
   never leaves claims waiting that a sweep would take back, and a worker that dies here leaves
   a queued row that the sweep enqueues again.
3. **Claim and re-check** in one short transaction: the conditional update ``queued -> sending``
   (a second worker finds the row claimed and does nothing); the order is not cancelled, the
   customer not erased, consent for the channel still stands, the contact is valid, so a
   revocation, cancellation or erasure committed while the worker waited stops the send
   (``suppressed``, or the next consented channel; ``withdrawn``) before any provider request.
   The message is built from these fresh rows and the marker ``sending_at`` set: a ``sending``
   row has its provider call under way or done. A claim whose connection was lost may have
   been committed unheard: before it runs again, a row still carrying this worker's own marker
   is taken back to ``queued`` (the provider was not called), then claimed afresh.
4. **Send** through the channel. Only an answer that proves nothing was created (429, a refused
   connection, a validation error) is retried or failed. Any other answer (5xx, 408, a connection
   lost after the request was written, a success without the message's id) may mean the message
   exists, and neither provider takes an idempotency key: the row stays ``sending`` and
   :meth:`Sender.settle` resolves it from the provider's evidence, never by sending again.
5. **Record** ``sending -> sent`` with the provider's message id. A customer erased during the
   provider call still counts as invited (the message did go out) but nothing personal is kept:
   no provider message id (it leads to the provider's copy, with the contact) and no body.

Transient errors put the row back to ``scheduled`` with its retry time in the row, so the
scheduler, not the broker's in-memory delay queue, brings it back.

Reminders (:meth:`Sender.send_reminder`) follow the same steps on an open invitation: claimed by
their count, re-checked after the rate limit wait (still open, so neither answered nor opted out;
consent, contact, order, erasure), never retried.

Where each part lives: :mod:`~dispatch.sending.sender` (the :class:`Sender`, the steps in order),
:mod:`~dispatch.sending.claims` (steps 1 and 3; :mod:`~dispatch.sending.claim_one`, step 3 in
one statement on PostgreSQL when nothing stops the send), :mod:`~dispatch.sending.message` (the
message), :mod:`~dispatch.sending.records` (steps 4 and 5), :mod:`~dispatch.sending.settle` (the
reconciler), :mod:`~dispatch.sending.reminders`, :mod:`~dispatch.sending.common` (what they share).
"""

from dispatch.consent import erased_customer
from dispatch.sending.common import (
    BASE_BACKOFF,
    MAX_BACKOFF,
    MAX_SEND_ATTEMPTS,
    MessageNotBuilt,
    SendInvariantError,
    SendOutcome,
    backoff,
    masked,
)
from dispatch.sending.sender import Sender
from dispatch.sending.settle import (
    LOOKUP_FIRST_INTERVAL,
    LOOKUP_MARGIN,
    LOOKUP_MAX_INTERVAL,
    LookupSchedule,
)

__all__ = [
    "BASE_BACKOFF",
    "LOOKUP_FIRST_INTERVAL",
    "LOOKUP_MARGIN",
    "LOOKUP_MAX_INTERVAL",
    "MAX_BACKOFF",
    "MAX_SEND_ATTEMPTS",
    "LookupSchedule",
    "MessageNotBuilt",
    "SendInvariantError",
    "SendOutcome",
    "Sender",
    "backoff",
    "erased_customer",
    "masked",
]
