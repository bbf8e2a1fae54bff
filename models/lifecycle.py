"""The survey lifecycle: every state, every allowed move, and what each final state means.

This module is the one place that says how a survey may move. :func:`models.surveys.move` is the
one function that writes a survey's state, and it refuses any move not listed here.

::

    waiting_anchor -> scheduled -> queued -> sending -> sent -> delivered -> answered -> completed
          |              |           |         |         |         |            |
          |              |           |         |         |         |            +--> partial
          |              |           |         |         |         |            (window closed)
          +--------------+-----------+--> withdrawn | suppressed            (before sending)
                                               +--> failed | send_unknown   (the send itself)
                                                         +---------+--> undeliverable | opted_out
                                                                   +--> no_response (window closed)

A STOP reply also ends an SMS invitation still in ``sending`` (its provider call made) or in
``send_unknown`` as ``opted_out``: the reply proves the message arrived, and the recipient said no.

``answered`` means a score arrived; ``completed`` that the follow-up came too; ``partial`` that
the response window closed after the score and before the follow-up. All three are answers
(``answered`` and ``partial`` are AAPOR partials, ``completed`` a complete); a score may still
change within the response window. When the window closes every invitation ends in a final
state: ``sent``/``delivered`` as ``no_response``, ``answered`` as ``partial``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable


class SurveyState(enum.StrEnum):
    waiting_anchor = (
        "waiting_anchor"  # planned, its anchor event (fulfilled/delivered) not yet seen
    )
    scheduled = "scheduled"  # due time known; the scheduler will queue it
    queued = "queued"  # claimed by the scheduler, send_survey(id) enqueued
    sending = "sending"  # claimed by a worker; the provider call is under way
    sent = "sent"  # the provider accepted it
    delivered = "delivered"  # the provider confirmed delivery
    answered = "answered"  # a score arrived
    completed = "completed"  # the follow-up arrived too
    partial = "partial"  # a score arrived, the follow-up did not, and the window closed
    # Final non-response states.
    withdrawn = "withdrawn"  # order cancelled/refunded, customer erased, before sending
    suppressed = "suppressed"  # consent revoked before sending
    failed = "failed"  # permanent provider error, no fallback left
    undeliverable = "undeliverable"  # bounce, dropped, undelivered after acceptance
    opted_out = "opted_out"  # STOP, unsubscribe, spam report after the invitation
    send_unknown = "send_unknown"  # a send whose outcome could not be established
    no_response = "no_response"  # the response window closed without a score


S = SurveyState

PENDING_STATES: frozenset[SurveyState] = frozenset({S.waiting_anchor, S.scheduled})
"""Not yet handed to the queue: re-planned freely when the config changes."""

UNSENT_STATES: frozenset[SurveyState] = frozenset({S.waiting_anchor, S.scheduled, S.queued})
"""Nothing has gone to a provider: a cancellation or revocation can still stop it."""

INVITED_STATES: frozenset[SurveyState] = frozenset(
    {
        S.sent,
        S.delivered,
        S.answered,
        S.partial,
        S.completed,
        S.undeliverable,
        S.opted_out,
        S.no_response,
    }
)
"""The provider accepted an invitation at some point."""

OPEN_STATES: frozenset[SurveyState] = frozenset({S.sent, S.delivered})
"""Invited and waiting for an answer."""

ANSWERED_STATES: frozenset[SurveyState] = frozenset({S.answered, S.partial, S.completed})
"""A score arrived: counted as an answer (with its score in the NPS) wherever it is reported."""

AWAITING_FOLLOWUP_STATES: frozenset[SurveyState] = frozenset({S.answered})
"""Scored, follow-up not yet given: ends ``partial`` when the response window closes."""

FINAL_STATES: frozenset[SurveyState] = frozenset(
    {
        S.withdrawn,
        S.suppressed,
        S.failed,
        S.undeliverable,
        S.opted_out,
        S.send_unknown,
        S.no_response,
        S.partial,
        S.completed,
    }
)

_BEFORE_SEND_STOPS = {S.withdrawn, S.suppressed}

TRANSITIONS: dict[SurveyState, frozenset[SurveyState]] = {
    # Pending states move among themselves when re-planned (a new config, an anchor event, a
    # fallback channel): the due time changes, nothing has been sent.
    S.waiting_anchor: frozenset({S.waiting_anchor, S.scheduled, *_BEFORE_SEND_STOPS}),
    S.scheduled: frozenset({S.waiting_anchor, S.scheduled, S.queued, *_BEFORE_SEND_STOPS}),
    # queued -> scheduled: the moment of sending fell into quiet hours, so it waits again.
    S.queued: frozenset({S.sending, S.scheduled, S.queued, *_BEFORE_SEND_STOPS}),
    # sending -> scheduled: a transient error; the row carries the retry time (the database is
    # the schedule, not the broker's delay queue). sending -> queued: a fallback channel, now.
    # sending -> delivered/answered: the provider's callback or the reply overtook our own commit.
    # sending -> opted_out: a STOP reply to the message overtook our own commit.
    S.sending: frozenset(
        {
            S.sent,
            S.delivered,
            S.answered,
            S.opted_out,
            S.scheduled,
            S.queued,
            S.failed,
            S.send_unknown,
            S.suppressed,
            S.withdrawn,
            S.undeliverable,
        }
    ),
    S.sent: frozenset(
        {S.delivered, S.answered, S.undeliverable, S.opted_out, S.no_response, S.sent}
    ),
    S.delivered: frozenset({S.answered, S.undeliverable, S.opted_out, S.no_response, S.delivered}),
    # answered -> answered: a changed mind within the window (history keeps the old score).
    # answered -> partial: the window closed before the follow-up came.
    S.answered: frozenset({S.answered, S.completed, S.partial}),
    # A late provider callback can prove that a send we could not confirm did go out.
    # A STOP reply proves it too, and ends it like any open invitation's STOP.
    S.send_unknown: frozenset({S.sent, S.delivered, S.answered, S.undeliverable, S.opted_out}),
    S.completed: frozenset({S.completed}),
    # The window is closed: neither a changed score nor a late follow-up reopens it.
    S.partial: frozenset(),
    S.withdrawn: frozenset(),
    S.suppressed: frozenset(),
    S.failed: frozenset(),
    # An answer proves it arrived after all; so does an SMS delivery receipt that arrives after a
    # failure report (callbacks come out of order; SMS_RANK puts delivered above undelivered).
    S.undeliverable: frozenset({S.answered, S.delivered}),
    S.opted_out: frozenset(),
    S.no_response: frozenset(),
}


def can_move(source: SurveyState, target: SurveyState) -> bool:
    return target in TRANSITIONS[source]


def sources_of(target: SurveyState) -> frozenset[SurveyState]:
    """Every state from which ``target`` may be reached."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


class IllegalMove(ValueError):
    """A move the lifecycle does not allow was asked for: a bug in the caller, never bad input."""


def require_moves(moves: Iterable[tuple[SurveyState, SurveyState]]) -> None:
    """Refuse, before anything is written, a batch of ``(source, target)`` moves in which one is
    not in :data:`TRANSITIONS`: the rule the single-survey moves follow, checked for a batch."""
    for source, target in set(moves):
        if not can_move(source, target):
            raise IllegalMove(f"a survey may not move from {source.value} to {target.value}")


class Disposition(enum.StrEnum):
    """AAPOR final disposition codes (Standard Definitions, 10th ed.)."""

    I = "I"  # complete  # noqa: E741
    P = "P"  # partial
    R = "R"  # refusal and break-off
    NC = "NC"  # non-contact
    O = "O"  # other  # noqa: E741
    UH = "UH"  # unknown if household/occupied: unknown eligibility, no contact attempt resolved
    UO = "UO"  # unknown, other
    NE = "NE"  # not eligible


DISPOSITION_OF: dict[SurveyState, Disposition] = {
    S.completed: Disposition.I,
    S.answered: Disposition.P,
    S.partial: Disposition.P,  # a score without the follow-up, window closed
    S.opted_out: Disposition.R,
    S.no_response: Disposition.NC,  # invited (maybe delivered), never answered
    S.undeliverable: Disposition.UO,  # the contact may be wrong: eligibility unknown
    S.send_unknown: Disposition.UO,
    S.failed: Disposition.UH,  # never reached: the number or address is not usable
    S.withdrawn: Disposition.NE,  # the order was cancelled: no longer a customer to ask
    S.suppressed: Disposition.NE,  # consent gone: may not be asked
}


class SkipReason(enum.StrEnum):
    """Why a purchase got no survey. Every purchase ends with a survey or one of these."""

    no_consent = "no_consent"
    invalid_contact = "invalid_contact"
    no_contact = "no_contact"
    no_channel = "no_channel"  # consented channels are all switched off in the config
    frequency_cap = "frequency_cap"
    sampled_out = "sampled_out"
    excluded_test_order = "excluded_test_order"
    excluded_min_total = "excluded_min_total"
    cancelled = "cancelled"  # cancelled or refunded before the purchase event arrived
    erased = "erased"
