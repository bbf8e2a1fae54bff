"""Scores and comments, from the answer page and from SMS, and the email unsubscribe link.

:func:`record_web_score` / :func:`record_web_comment` take the answer page's posts;
:func:`_set_score` / :func:`_set_comment` are the one way a score or comment is recorded (SMS
answers use them too), keeping every answer in ``answers``, and, in the same transaction, the
detractor alert of a detractor score (:mod:`dispatch.alerts`). Free text about an erased customer
is never kept. :func:`unsubscribe_email` revokes email consent from the unsubscribe link.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from config import OperatorConfig
from dispatch import alerts
from dispatch.consent import customer_erased
from dispatch.responses.common import (
    _SCORED,
    S,
    WebAnswer,
    _clean_text,
    _lock_survey,
    _window_end,
    can_answer,
)
from dispatch.stopping import on_consent_revoked
from models import (
    Answer,
    Customer,
    Survey,
    SurveyState,
    current_consent,
    move,
)
from models.customers import latest_consent, record_consent
from models.lifecycle import OPEN_STATES

log = logging.getLogger(__name__)

#: The survey's customer row, share-locked (``FOR SHARE`` on PostgreSQL).
_LOCK_CUSTOMER_OF_SURVEY = (
    select(Customer.id)
    .where(
        Customer.id
        == select(Survey.customer_id).where(Survey.id == bindparam("survey_id")).scalar_subquery()
    )
    .with_for_update(read=True)
)


def _lock_for_answer(session: Session, survey_id: int) -> Survey | None:
    """The survey, locked, after a share lock on its customer's row.

    The erasure takes them in this order (the customer ``FOR UPDATE``, then its surveys), and
    an answer or an unsubscribe reads or writes the customer's row after the survey's (the
    erased check before keeping a comment, the consent record's foreign key). Taken survey
    first, the two would each wait for the other until PostgreSQL aborted one: the respondent's
    post, or the erasure. Taken customer first, one waits for the other and both finish. A
    survey's customer never changes, so reading it before the survey's lock is safe."""
    session.execute(_LOCK_CUSTOMER_OF_SURVEY, {"survey_id": survey_id})
    return _lock_survey(session, survey_id)


def _set_score(
    session: Session,
    survey: Survey,
    score: int,
    via: str,
    config: OperatorConfig,
    now: datetime,
    comment: str | None = None,
) -> Literal["recorded", "unchanged", "closed"]:
    """Record a score (and a comment given with it), keeping the history in ``answers``."""
    if comment is not None and customer_erased(session, survey.customer_id):
        comment = None  # free text about an erased customer is not kept; the score counts
    state = SurveyState(survey.state)
    if state in _SCORED and survey.score == score and comment is None:
        return "unchanged"
    values: dict[str, object] = {"score": score}
    if survey.answered_at is None:
        values["answered_at"] = now
    if survey.closes_at is None:
        values["closes_at"] = _window_end(survey, config)
    if survey.final_reason is not None:
        values["final_reason"] = None  # an answer after a failure report: it arrived after all
    target = S.completed if state == S.completed else S.answered
    if comment is not None and target == S.completed:
        values["comment"] = comment
    if not move(
        session, survey.id, target, reason=f"score via {via}", only_from=[state], now=now, **values
    ):
        return "closed"
    if comment is not None and target == S.answered:
        move(
            session,
            survey.id,
            S.completed,
            reason=f"comment via {via}",
            only_from=[S.answered],
            now=now,
            comment=comment,
        )
    session.add(Answer(survey_id=survey.id, score=score, comment=comment, via=via, received_at=now))
    alerts.on_score(session, survey.id, score, config, now, with_comment=comment is not None)
    return "recorded"


def _set_comment(session: Session, survey: Survey, comment: str, via: str, now: datetime) -> bool:
    """The follow-up answer: ``answered -> completed`` (or a new comment on a completed one)."""
    state = SurveyState(survey.state)
    if state not in _SCORED:
        return False
    if customer_erased(session, survey.customer_id):
        return True  # taken, not kept: free text about an erased customer
    if not move(
        session,
        survey.id,
        S.completed,
        reason=f"comment via {via}",
        only_from=[state],
        now=now,
        comment=comment,
    ):
        return False
    session.add(Answer(survey_id=survey.id, score=None, comment=comment, via=via, received_at=now))
    alerts.on_comment(session, survey.id, now)
    return True


# --------------------------------------------------------------------------------------------
# The answer page
# --------------------------------------------------------------------------------------------


def record_web_score(
    session: Session, survey_id: int, score: int, config: OperatorConfig, now: datetime
) -> WebAnswer:
    """A score posted from the answer page; a changed mind updates it and keeps the history."""
    if not 0 <= score <= 10:
        raise ValueError(f"score must be 0..10, not {score}")
    survey = _lock_for_answer(session, survey_id)
    if survey is None or not can_answer(survey, now):
        return WebAnswer("closed")
    outcome = _set_score(session, survey, score, "web", config, now)
    if outcome == "closed":
        return WebAnswer("closed")
    log.info("survey %s: score via web (%s)", survey_id, outcome)
    return WebAnswer(outcome, score)


def record_web_comment(session: Session, survey_id: int, comment: str, now: datetime) -> WebAnswer:
    """The follow-up answer from the answer page. A blank comment changes nothing."""
    survey = _lock_for_answer(session, survey_id)
    if survey is None or not can_answer(survey, now):
        return WebAnswer("closed")
    if survey.score is None:
        return WebAnswer("no_score")
    text = _clean_text(comment)
    if text is None or text == survey.comment:
        return WebAnswer("unchanged", survey.score)
    if not _set_comment(session, survey, text, "web", now):
        return WebAnswer("closed")
    return WebAnswer("recorded", survey.score)


def unsubscribe_email(
    session: Session, survey_id: int, config: OperatorConfig, now: datetime
) -> str:
    """The unsubscribe link (and RFC 8058 one-click POST): revoke email consent, stop unsent
    email surveys, end this open email invitation ``opted_out``. Idempotent."""
    survey = _lock_for_answer(session, survey_id)
    if survey is None:
        return "no survey"
    customer = session.get(Customer, survey.customer_id)
    if customer is None:
        return "no customer"
    outcome = "already unsubscribed"
    if latest_consent(session, customer.id, "email") is not False:
        record_consent(
            session,
            customer,
            {"email": False},
            source="answer-page:unsubscribe",
            text_version=None,
            captured_at=now,
            evidence_kind="unsubscribe_link",
            evidence_ref=f"survey:{survey.id}",
            recorded_at=now,
        )
        outcome = "unsubscribed"
    if not current_consent(session, customer.id, "email"):
        on_consent_revoked(session, customer, "email", config, now)
    if survey.channel == "email":
        move(
            session,
            survey.id,
            S.opted_out,
            reason="unsubscribe link",
            only_from=OPEN_STATES,
            now=now,
            final_reason="email unsubscribe (link)",
        )
    log.info("survey %s: email %s", survey_id, outcome)
    return outcome
