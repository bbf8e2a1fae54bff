"""The small values and survey helpers every response module shares.

The outcome types (:class:`Applied`, :class:`Handled`, :class:`SmsReply`, :class:`WebAnswer`...),
the state sets that say which survey takes which answer, and the survey lookups (lock, window,
:func:`can_answer`, customer text cleaning).
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from channels.base import DeliveryEventKind
from config import BandName, OperatorConfig
from models import (
    Survey,
    SurveyState,
)
from models.lifecycle import AWAITING_FOLLOWUP_STATES

log = logging.getLogger(__name__)
S = SurveyState
K = DeliveryEventKind
MAX_COMMENT: Final = 2000
"""Longest comment kept (characters); longer ones are cut."""


CONSENT_KINDS: Final = frozenset({K.opted_out, K.spam_report, K.opted_in})
"""Delivery event kinds that change a customer's email consent rather than a message's state."""

#: Our own commit of the send is missing: any provider evidence moves these forward.
_UNCONFIRMED: Final = frozenset({S.sending, S.send_unknown})

SMS_REPLY_STATES: Final = frozenset({S.sent, S.delivered, *AWAITING_FOLLOWUP_STATES})
"""An SMS survey in one of these states, within its window, takes the sender's replies.
``sending`` and ``send_unknown`` do too: a reply proves the invitation went out. A ``partial``
survey does not: its window has closed, so a late reply finds no open survey."""

_SCORED: Final = frozenset({*AWAITING_FOLLOWUP_STATES, S.completed})
"""Scored within a window still open: a new score is a changed mind, a comment the follow-up."""

ANSWERABLE_STATES: Final = frozenset(
    {S.sending, S.sent, S.delivered, S.send_unknown, S.undeliverable, *_SCORED}
)
"""A score may be recorded (or changed) in these states, within the response window. A
``partial`` survey takes nothing more: the window closed before its follow-up came."""


# --------------------------------------------------------------------------------------------
# Small values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredWebhook:
    row_id: int
    duplicate: bool  # the provider id was stored before
    pending: bool  # not applied yet (new, or an earlier attempt failed)


@dataclass(frozen=True, slots=True)
class SmsReply:
    """What to answer an inbound SMS with; the web layer turns it into words (locale, config)."""

    kind: Literal["followup", "reprompt", "thanks", "help"]
    locale: str | None
    band: BandName | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """The effect of one event: ``result`` is stored on the raw row (at most 40 characters).

    ``subject_key`` is the keyed pseudonym of the customer the event was about. ``erased``: it
    was about an erased customer, so the raw row keeps nothing tying it to them or their survey.
    """

    result: str
    survey_id: int | None = None
    subject_key: str | None = None
    reply: SmsReply | None = None
    erased: bool = False


@dataclass(frozen=True, slots=True)
class Handled:
    row_id: int
    status: Literal["applied", "duplicate", "already", "failed"]
    result: str | None = None
    reply: SmsReply | None = None


@dataclass
class ReplayReport:
    applied: int = 0
    failed: int = 0
    skipped: int = 0  # handled meanwhile, or locked by another replayer


@dataclass(frozen=True, slots=True)
class WebAnswer:
    """The outcome of an answer-page post."""

    status: Literal["recorded", "unchanged", "closed", "no_score"]
    score: int | None = None


# --------------------------------------------------------------------------------------------
# Shared survey helpers
# --------------------------------------------------------------------------------------------


def _lock_survey(session: Session, survey_id: int) -> Survey | None:
    """The survey, locked. ``FOR NO KEY UPDATE`` on PostgreSQL: every other writer still
    waits, but not the foreign-key check of a webhook request storing a raw row tied to the
    survey (which may hold a message row this transaction wants next)."""
    return session.scalar(
        select(Survey).where(Survey.id == survey_id).with_for_update(key_share=True)
    )


def _window_end(survey: Survey, config: OperatorConfig) -> datetime:
    if survey.closes_at is not None:
        return survey.closes_at
    started = survey.sent_at or survey.sending_at or survey.state_changed_at
    return started + config.survey.response_window


def can_answer(survey: Survey, now: datetime) -> bool:
    """Whether a score may still be recorded for ``survey`` (state and window)."""
    if SurveyState(survey.state) not in ANSWERABLE_STATES:
        return False
    return survey.closes_at is None or survey.closes_at > now


def _clean_text(text: str) -> str | None:
    """Customer text as stored: no control characters but line breaks and tabs (PostgreSQL
    refuses NUL), trimmed, at most :data:`MAX_COMMENT` characters; ``None`` when empty."""
    kept = "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs")
    ).strip()
    return kept[:MAX_COMMENT] or None
