"""Detractor alerts: the outbox rules (``models.alerts``) from the answer to the worker's claim.

- **Recording** (:func:`on_score`, :func:`on_comment`, called where scores and comments are
  recorded, in the same transaction): a score in the detractor band writes one ``pending`` row
  per configured target (``[alerts]``), unique per survey and target, so a re-recorded or
  changed score never makes a second. It becomes due :data:`COMMENT_WAIT` after the score, or at
  once when the follow-up comment arrives (or came with the score). A score changed to a
  non-detractor one before delivery cancels the alert; changed back (still undelivered), the
  same row is pending again. Once claimed or delivered an alert is not called back.
- **Sweeping** (:func:`enqueue_due_alerts`, one step of the scheduler pass, four statements
  whatever the batch): due rows become ``queued`` and are committed, and only then enqueued; a
  row queued for longer than :data:`QUEUED_STALE` is enqueued again (a lost message, or a
  broker that was down); a row left ``delivering`` for longer than :data:`DELIVERING_STALE`
  (its worker died) is tried again for a webhook, whose receiver can recognise a repeat by the
  alert's id, and ends ``failed`` for an email, which may have gone out and is never sent twice.
- **Claiming** (:func:`claim`, by the worker): ``queued -> delivering`` with the attempt counted,
  a conditional update, so a duplicate queue message sends nothing; then :func:`finish`
  records the attempt's outcome: ``delivered``, ``failed``, or ``pending`` again after a back-off
  (:func:`backoff`) until :data:`MAX_ATTEMPTS`, then ``failed``.

**Delivered how often.** An email alert at most once: only an answer proving nothing was sent
is retried, and a claim whose worker died is given up (``failed``, with an ``ALERT`` line).
A webhook alert at least once, necessarily: a receiver's answer lost to a time-out, or a worker
killed after the POST and before recording it, leaves no proof either way, so it is posted
again. Every attempt of one alert carries the same id (the body's ``id`` and the
``X-NPS-Alert-Id`` header), and there is one alert per survey and target, so a receiver that
keeps the ids it took sees each alert once.

Nothing personal is stored in the outbox: what an alert says is read from the survey when it is
claimed (:mod:`dispatch.alert_delivery`); an alert whose customer was erased before then is
cancelled, so nothing about them is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, Literal

from sqlalchemy import ColumnElement, Row, case, select, update
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from logs.metrics import DETRACTOR_ALERTS
from models import AlertState, DetractorAlert
from models.base import insert_ignoring_conflict

__all__ = [
    "COMMENT_WAIT",
    "CUSTOMER_ERASED",
    "DELIVERING_STALE",
    "MAX_ATTEMPTS",
    "QUEUED_STALE",
    "SCORE_CHANGED",
    "Claim",
    "Outcome",
    "backoff",
    "claim",
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
#: ``last_error`` of an alert whose worker stopped while delivering it.
WORKER_STOPPED: Final = "worker stopped during delivery"
#: ``last_error`` of an email alert whose worker stopped while delivering it: never sent twice.
EMAIL_MAY_HAVE_GONE: Final = WORKER_STOPPED + "; the email may have gone out: not sent again"
#: ``last_error`` of a webhook alert whose worker stopped during its last attempt.
OUT_OF_ATTEMPTS: Final = WORKER_STOPPED + f"; gave up after {MAX_ATTEMPTS} attempts"
#: ``last_error`` of an alert cancelled because its customer was erased before it went out.
CUSTOMER_ERASED: Final = "customer erased: nothing about them is sent"

_OPEN = (A.pending.value, A.queued.value)

#: What an attempt can end in (``retry``: ``pending`` again, until its next due time).
Outcome = Literal["delivered", "retry", "failed", "cancelled"]

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
            .returning(DetractorAlert.target)
            .execution_options(synchronize_session=False)
        ).scalars()
        for target in cancelled:
            DETRACTOR_ALERTS.labels(target=target, outcome="cancelled").inc()
            log.info("survey %s: detractor alert (%s) cancelled (score changed)", survey_id, target)
        return
    targets = config.alerts.targets()
    if not targets:
        return
    due = now if with_comment else now + COMMENT_WAIT
    for target in targets:
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
            DetractorAlert.target.in_(targets),
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


def _take(
    session: Session,
    where: Sequence[ColumnElement[bool]],
    values: Mapping[str, object],
    limit: int,
) -> list[Row[int, str, int]]:
    """One statement: update up to ``limit`` rows matching ``where`` (oldest due first) and
    return their ids, targets and attempts. On PostgreSQL the rows are chosen ``FOR UPDATE SKIP
    LOCKED``, so two sweepers never take the same row; a row another sweeper changed meanwhile
    is checked against ``where`` again and left out when it no longer matches."""
    chosen = (
        select(DetractorAlert.id)
        .where(*where)
        .order_by(DetractorAlert.due_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = session.execute(
        update(DetractorAlert)
        .where(DetractorAlert.id.in_(chosen))
        .values(**values)
        .returning(DetractorAlert.id, DetractorAlert.target, DetractorAlert.attempts)
        .execution_options(synchronize_session=False)
    )
    return list(result)


def _sweep(
    session: Session, now: datetime, limit: int
) -> tuple[list[int], list[Row[int, str, int]]]:
    """The sweep's four statements, whatever the number of rows: due ``pending`` rows become
    ``queued``; rows ``queued`` since :data:`QUEUED_STALE` are queued anew (a lost message);
    rows ``delivering`` since :data:`DELIVERING_STALE` (a dead worker) are queued again when
    they are webhooks with attempts left, else end ``failed``. Returns the ids to enqueue, and
    the rows given up (id, target, attempts)."""
    queued = {"state": A.queued, "queued_at": now}
    due = _take(
        session, [DetractorAlert.state == A.pending, DetractorAlert.due_at <= now], queued, limit
    )
    lost = _take(
        session,
        [DetractorAlert.state == A.queued, DetractorAlert.queued_at <= now - QUEUED_STALE],
        {"queued_at": now},
        limit,
    )
    stuck = [
        DetractorAlert.state == A.delivering,
        DetractorAlert.claimed_at <= now - DELIVERING_STALE,
    ]
    retried = _take(
        session,
        [*stuck, DetractorAlert.target == "webhook", DetractorAlert.attempts < MAX_ATTEMPTS],
        {**queued, "last_error": WORKER_STOPPED},
        limit,
    )
    given_up = _take(
        session,
        stuck,
        {
            "state": A.failed,
            "finished_at": now,
            "last_error": case(
                (DetractorAlert.target == "email", EMAIL_MAY_HAVE_GONE),
                else_=OUT_OF_ATTEMPTS,
            ),
        },
        limit,
    )
    return [row[0] for row in (*due, *lost, *retried)], given_up


def enqueue_due_alerts(
    factory: sessionmaker[Session],
    now: datetime,
    enqueue: Callable[[int], object],
    limit: int = 500,
) -> int:
    """Queue what is due (and what a lost message or a dead worker left behind), commit, then
    hand each id to ``enqueue``. Returns how many were enqueued.

    An ``enqueue`` that raises (the broker away) leaves the rest ``queued``: they are enqueued
    again :data:`QUEUED_STALE` later, and a duplicate message sends nothing (:func:`claim`)."""
    with factory() as session, session.begin():
        ids, given_up = _sweep(session, now, limit)
    for alert_id, target, attempts in given_up:  # told once committed
        DETRACTOR_ALERTS.labels(target=target, outcome="failed").inc()
        log.error(
            "ALERT detractor alert %s (%s) failed after %d attempt(s): %s",
            alert_id,
            target,
            attempts,
            EMAIL_MAY_HAVE_GONE if target == "email" else OUT_OF_ATTEMPTS,
        )
    # Committed first: a message lost from here on is enqueued again after QUEUED_STALE.
    for alert_id in ids:
        enqueue(alert_id)
    return len(ids)


# --------------------------------------------------------------------------------------------
# Claiming and finishing, in the worker
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claim:
    """An alert this worker holds in ``delivering``, at attempt number ``attempt``."""

    alert_id: int
    survey_id: int
    target: str
    attempt: int


def claim(session: Session, alert_id: int, now: datetime) -> Claim | None:
    """``queued -> delivering``, counting the attempt; ``None`` when it is not queued (a
    duplicate message, or cancelled meanwhile): then nothing is to be sent."""
    row = session.execute(
        update(DetractorAlert)
        .where(DetractorAlert.id == alert_id, DetractorAlert.state == A.queued)
        .values(state=A.delivering, claimed_at=now, attempts=DetractorAlert.attempts + 1)
        .returning(DetractorAlert.survey_id, DetractorAlert.target, DetractorAlert.attempts)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        return None
    return Claim(alert_id, row.survey_id, row.target, row.attempts)


def finish(
    session: Session,
    claimed: Claim,
    outcome: Outcome,
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
