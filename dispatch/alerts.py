"""Detractor alerts: the outbox rules (``models.alerts``) from the answer to the worker's claim.

- **Recording** (:func:`on_score`, :func:`on_comment`, called where scores and comments are
  recorded, in the same transaction): a score in the detractor band writes one ``pending`` row
  per configured target (``[alerts]``), unique per survey and target, so a re-recorded or
  changed score never makes a second. It becomes due :data:`COMMENT_WAIT` after the score, or at
  once when the follow-up comment arrives (or came with the score). A score changed to a
  non-detractor one before delivery cancels the alert; changed back (still undelivered), the
  same row is pending again. Once claimed or delivered an alert is not called back.
- **Sweeping** (:func:`enqueue_due_alerts`, one step of the scheduler pass): due rows become
  ``queued`` and are committed, and only then enqueued; a row queued for longer than
  :data:`QUEUED_STALE` is enqueued again (a lost message); a row left ``delivering`` for longer
  than :data:`DELIVERING_STALE` (its worker died) is tried again for a webhook, whose receiver
  can recognise a repeat by the alert's id, and ends ``failed`` for an email, which may have
  gone out and is never sent twice.
- **Claiming** (:func:`claim`, by the worker): ``queued -> delivering`` with the attempt counted,
  a conditional update, so a duplicate queue message sends nothing; then :func:`finish`
  records the attempt's outcome: ``delivered``, ``failed``, or ``pending`` again after a back-off
  (:func:`backoff`) until :data:`MAX_ATTEMPTS`, then ``failed``.

Nothing personal is stored in the outbox: what an alert says is read from the survey when it is
claimed (:mod:`dispatch.alert_delivery`), after any erasure has emptied the comment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import select, update
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from config import OperatorConfig
from logs.metrics import DETRACTOR_ALERTS
from models import AlertState, DetractorAlert
from models.base import insert_ignoring_conflict

__all__ = [
    "COMMENT_WAIT",
    "DELIVERING_STALE",
    "MAX_ATTEMPTS",
    "QUEUED_STALE",
    "SCORE_CHANGED",
    "Claim",
    "backoff",
    "claim",
    "due_alerts",
    "enqueue_due_alerts",
    "finish",
    "on_comment",
    "on_score",
]

log = logging.getLogger(__name__)
A = AlertState

#: How long an alert waits for the follow-up comment after the score.
COMMENT_WAIT: Final = timedelta(seconds=30)
#: Attempts of one alert before it ends ``failed``.
MAX_ATTEMPTS: Final = 8
#: A row ``queued`` this long without being claimed is enqueued again.
QUEUED_STALE: Final = timedelta(minutes=2)
#: A row ``delivering`` this long belongs to a worker that died (an attempt takes seconds).
DELIVERING_STALE: Final = timedelta(minutes=5)
#: ``last_error`` of an alert cancelled because the score left the detractor band.
SCORE_CHANGED: Final = "score changed: no longer a detractor"

_OPEN = (A.pending.value, A.queued.value)

for _target in ("webhook", "email"):  # every series exposed, at zero until it counts
    for _outcome in ("delivered", "retry", "failed", "cancelled"):
        DETRACTOR_ALERTS.labels(target=_target, outcome=_outcome)


def backoff(attempts: int) -> timedelta:
    """The wait after failed attempt number ``attempts``: 30 s doubling, at most 30 minutes
    (eight attempts span about an hour)."""
    wait: timedelta = timedelta(seconds=30) * 2 ** max(attempts - 1, 0)
    return min(wait, timedelta(minutes=30))


# --------------------------------------------------------------------------------------------
# Recording, in the answer's transaction
# --------------------------------------------------------------------------------------------


def on_score(
    session: Session,
    survey_id: int,
    score: int,
    config: OperatorConfig,
    now: datetime,
    *,
    with_comment: bool = False,
) -> None:
    """A score was recorded for ``survey_id``: write, revive or cancel its alerts."""
    if config.survey.bands.band_of(score) != "detractor":
        cancelled = session.execute(
            update(DetractorAlert)
            .where(DetractorAlert.survey_id == survey_id, DetractorAlert.state.in_(_OPEN))
            .values(state=A.cancelled, finished_at=now, last_error=SCORE_CHANGED)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(cancelled):
            log.info("survey %s: detractor alert cancelled (score changed)", survey_id)
        return
    due = now if with_comment else now + COMMENT_WAIT
    for target in config.alerts.targets():
        session.execute(
            insert_ignoring_conflict(
                session,
                DetractorAlert,
                ["survey_id", "target"],
                {
                    "survey_id": survey_id,
                    "target": target,
                    "state": A.pending.value,
                    "created_at": now,
                    "due_at": due,
                    "attempts": 0,
                },
            )
        )
    # Cancelled by an earlier change of mind and never delivered: the same alert, pending again.
    session.execute(
        update(DetractorAlert)
        .where(
            DetractorAlert.survey_id == survey_id,
            DetractorAlert.state == A.cancelled,
            DetractorAlert.last_error == SCORE_CHANGED,
        )
        .values(state=A.pending, due_at=due, finished_at=None, last_error=None)
        .execution_options(synchronize_session=False)
    )


def on_comment(session: Session, survey_id: int, now: datetime) -> None:
    """The follow-up comment was recorded: a pending alert need not wait any longer."""
    session.execute(
        update(DetractorAlert)
        .where(
            DetractorAlert.survey_id == survey_id,
            DetractorAlert.state == A.pending,
            DetractorAlert.attempts == 0,
            DetractorAlert.due_at > now,
        )
        .values(due_at=now)
        .execution_options(synchronize_session=False)
    )


def _rowcount(result: object) -> int:
    count = getattr(result, "rowcount", 0)
    return count if isinstance(count, int) and count > 0 else 0


# --------------------------------------------------------------------------------------------
# Sweeping, in the scheduler pass
# --------------------------------------------------------------------------------------------


def due_alerts(session: Session, now: datetime, limit: int = 500) -> list[DetractorAlert]:
    """Pending alerts due by ``now``, oldest first, locked (``SKIP LOCKED``: two schedulers
    never take the same row)."""
    return list(
        session.scalars(
            select(DetractorAlert)
            .where(DetractorAlert.state == A.pending, DetractorAlert.due_at <= now)
            .order_by(DetractorAlert.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def _stale(
    session: Session,
    state: A,
    column: InstrumentedAttribute[datetime | None],
    before: datetime,
    limit: int,
) -> list[DetractorAlert]:
    return list(
        session.scalars(
            select(DetractorAlert)
            .where(DetractorAlert.state == state, column <= before)
            .order_by(DetractorAlert.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )


def _recover_delivering(alert: DetractorAlert, now: datetime) -> bool:
    """A claim whose worker died. Returns whether the alert is to be enqueued again."""
    if alert.target == "webhook" and alert.attempts < MAX_ATTEMPTS:
        alert.state, alert.queued_at = A.queued, now
        alert.last_error = "worker stopped during delivery"
        return True
    alert.state, alert.finished_at = A.failed, now
    alert.last_error = (
        "worker stopped during delivery; the email may have gone out: not sent again"
        if alert.target == "email"
        else f"worker stopped during delivery; gave up after {alert.attempts} attempts"
    )
    DETRACTOR_ALERTS.labels(target=alert.target, outcome="failed").inc()
    log.error("ALERT detractor alert %s (%s): %s", alert.id, alert.target, alert.last_error)
    return False


def enqueue_due_alerts(
    factory: sessionmaker[Session],
    now: datetime,
    enqueue: Callable[[int], object],
    limit: int = 500,
) -> int:
    """Queue what is due (and what a lost message or a dead worker left behind), commit, then
    hand each id to ``enqueue``. Returns how many were enqueued."""
    with factory() as session, session.begin():
        ids: list[int] = []
        for alert in due_alerts(session, now, limit):
            alert.state, alert.queued_at = A.queued, now
            ids.append(alert.id)
        for alert in _stale(session, A.queued, DetractorAlert.queued_at, now - QUEUED_STALE, limit):
            alert.queued_at = now
            ids.append(alert.id)
        stuck = _stale(
            session, A.delivering, DetractorAlert.claimed_at, now - DELIVERING_STALE, limit
        )
        ids.extend(alert.id for alert in stuck if _recover_delivering(alert, now))
    # Committed first: a message lost from here on is enqueued again after QUEUED_STALE.
    for alert_id in ids:
        enqueue(alert_id)
    return len(ids)


# --------------------------------------------------------------------------------------------
# Claiming and finishing, in the worker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    alert_id: int
    survey_id: int
    target: str
    attempt: int


def claim(session: Session, alert_id: int, now: datetime) -> Claim | None:
    """``queued -> delivering``, counting the attempt; ``None`` when it is not queued (a
    duplicate message, or cancelled meanwhile): then nothing is to be sent."""
    result = session.execute(
        update(DetractorAlert)
        .where(DetractorAlert.id == alert_id, DetractorAlert.state == A.queued)
        .values(state=A.delivering, claimed_at=now, attempts=DetractorAlert.attempts + 1)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return None
    row = session.execute(
        select(DetractorAlert.survey_id, DetractorAlert.target, DetractorAlert.attempts).where(
            DetractorAlert.id == alert_id
        )
    ).one()
    return Claim(alert_id, row.survey_id, row.target, row.attempts)


def finish(
    session: Session,
    claimed: Claim,
    outcome: str,
    now: datetime,
    *,
    error: str | None = None,
    retry_after: timedelta | None = None,
) -> str:
    """Record an attempt's outcome (``delivered``, ``retry``, ``failed``, ``cancelled``) on the
    row this worker claimed, and count it. A retry past :data:`MAX_ATTEMPTS` is ``failed``.
    Returns the outcome recorded (``lost`` when the claim was no longer this worker's)."""
    values: dict[str, object] = {"last_error": (error or None) and error[:120]}
    if outcome == "retry" and claimed.attempt >= MAX_ATTEMPTS:
        outcome = "failed"
        values["last_error"] = f"{error or 'error'}; gave up after {claimed.attempt} attempts"[:120]
    if outcome == "retry":
        wait = max(backoff(claimed.attempt), retry_after or timedelta(0))
        values.update(state=A.pending, due_at=now + wait, queued_at=None)
    else:
        values.update(state=AlertState(outcome), finished_at=now)
    result = session.execute(
        update(DetractorAlert)
        .where(
            DetractorAlert.id == claimed.alert_id,
            DetractorAlert.state == A.delivering,
            DetractorAlert.attempts == claimed.attempt,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        log.warning(
            "detractor alert %s: claim lost before its outcome was recorded", claimed.alert_id
        )
        return "lost"
    DETRACTOR_ALERTS.labels(target=claimed.target, outcome=outcome).inc()
    if outcome == "failed":
        log.error(
            "ALERT detractor alert %s (%s) failed after %d attempt(s): %s",
            claimed.alert_id,
            claimed.target,
            claimed.attempt,
            values["last_error"],
        )
    return outcome
