"""Raw provider webhooks: kept once, then applied once, replayed with back-off after a failure.

The web layer verifies a webhook's signature and builds its :class:`RawWebhook` rows;
:func:`store_webhooks` keeps each once per provider id (``inbound_events``, unique on source +
external id) and commits; :func:`handle_webhook` applies one stored row in its own transaction,
holding the row's lock, and stamps ``handled_at``. What applying a row means is the caller's
``apply`` (the package routes each source to its rules). A failure while applying rolls back the
effect (a savepoint), keeps the row with ``handled_at`` null and its (masked) error, and counts
the attempt: :func:`replay_unhandled_webhooks` applies it again after :func:`replay_pause` (up
to :data:`REPLAY_BATCH` rows per transaction: runs of delivery events together in one savepoint
(:class:`ApplyTogether`), the other rows each in its own, and a run that fails row by row; when
a row fails the whole transaction, row by row, its failure counted in a transaction of its
own), and stops after
:data:`REPLAY_MAX_ATTEMPTS` failures, leaving the row and its error for an operator.

Once applied, a raw row keeps its payload only when it is tied to a survey (``survey_id``) or a
customer (``subject_key``), which is where erasure looks (:func:`_ties`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, cast

from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.exc import PendingRollbackError
from sqlalchemy.orm import Session, sessionmaker

from channels.base import DeliveryEvent, RawWebhook
from channels.webhook_sources import WEBHOOK_SOURCES as SOURCES
from config import OperatorConfig
from dispatch.responses.common import (
    Applied,
    Handled,
    ReplayReport,
    StoredWebhook,
)
from dispatch.scheduler import describe_error
from models import (
    InboundEvent,
    utcnow,
)
from models.bulk import update_rows
from models.inbound import claim_inbound_event

log = logging.getLogger(__name__)

RowApplier = Callable[[Session, InboundEvent, OperatorConfig, datetime, bool], Applied]
"""Applies one stored row's effect: ``(session, row, config, now, live)``."""


@dataclass(frozen=True, slots=True)
class ApplyTogether:
    """How the replay applies a run of stored rows with a fixed number of statements, instead of
    each through the :data:`RowApplier`: ``read`` gives a row's event when ``apply`` takes it
    (``None``: the row goes one by one, in its place in the order), and ``apply`` applies a run
    of such events in order, returning each one's effect, or raises (nothing of the run stays,
    and its rows are applied one by one)."""

    read: Callable[[InboundEvent], DeliveryEvent | None]
    apply: Callable[[Session, Sequence[DeliveryEvent], OperatorConfig, datetime], list[Applied]]


WEBHOOK_SOURCES: Final = tuple(SOURCES)
"""The ``source`` names of stored provider webhooks (``channels.webhook_sources``)."""

REPLAY_FIRST_PAUSE: Final = timedelta(minutes=1)
REPLAY_MAX_PAUSE: Final = timedelta(hours=6)
REPLAY_MAX_ATTEMPTS: Final = 20
"""A stored webhook whose application failed this many times is no longer replayed (about three
days of back-off); it stays unapplied with its error, counted by ``nps_webhooks_given_up``."""
REPLAY_BATCH: Final = 100
"""Stored webhooks a replay applies per transaction (runs of delivery events together, the
others each in its own savepoint): one commit for them all, and the locks they take held only
that long. A run of 100 delivery events costs about a dozen statements; at 20 a transaction,
``bench.replay`` applied 2,310-2,390 rows/s at 0.60 statements a row, against 4,420-4,470 at
0.12 with 100."""


def store_webhooks(
    factory: sessionmaker[Session], raws: Sequence[RawWebhook]
) -> list[StoredWebhook]:
    """Keep each raw event once (one transaction, committed before anything is applied)."""
    stored: list[StoredWebhook] = []
    seen: set[int] = set()
    with factory() as session, session.begin():
        for raw in raws:
            row_id = claim_inbound_event(
                session,
                source=raw.source,
                external_id=raw.external_id,
                event_type=raw.event_type[:40],
                payload=raw.payload,
            )
            if row_id is not None:
                stored.append(StoredWebhook(row_id, duplicate=False, pending=True))
                seen.add(row_id)
                continue
            existing = session.execute(
                select(InboundEvent.id, InboundEvent.handled_at).where(
                    InboundEvent.source == raw.source,
                    InboundEvent.external_id == raw.external_id,
                )
            ).one()
            pending = existing.handled_at is None and existing.id not in seen
            stored.append(StoredWebhook(existing.id, duplicate=True, pending=pending))
            seen.add(existing.id)
    return stored


def replay_pause(attempts: int) -> timedelta:
    """The pause after the ``attempts``-th failed application of a stored webhook: one minute,
    doubling with each failure, at most :data:`REPLAY_MAX_PAUSE`."""
    doublings = min(max(attempts - 1, 0), 16)  # 2**16 minutes is well past the cap already
    pause: timedelta = REPLAY_FIRST_PAUSE * (2**doublings)
    return min(pause, REPLAY_MAX_PAUSE)


def _count_failure(
    session: Session, row_id: int, attempts: int, failure: str, now: datetime
) -> None:
    """Record a failed application on the row: its count, its back-off, its (masked) error."""
    session.execute(
        update(InboundEvent)
        .where(InboundEvent.id == row_id)
        .values(attempts=attempts, retry_at=now + replay_pause(attempts), error=failure)
        .execution_options(synchronize_session=False)
    )


def _attempt(
    session: Session,
    row: InboundEvent,
    config: OperatorConfig,
    apply: RowApplier,
    now: datetime,
    live: bool,
) -> tuple[Handled, int, str | None]:
    """Apply one locked row inside a savepoint, and stamp it applied; on failure roll the
    savepoint back and record the failure on the row. Returns the outcome, the attempt's number
    and the failure."""
    attempts = (row.attempts or 0) + 1
    try:
        with session.begin_nested():
            applied = apply(session, row, config, now, live)
            session.execute(
                update(InboundEvent)
                .where(InboundEvent.id == row.id)
                .values(**_stamp(applied, now))
                .execution_options(synchronize_session=False)
            )
    except Exception as exc:  # the savepoint is rolled back: nothing of the effect stays
        failure = describe_error(exc, limit=2000)
        _count_failure(session, row.id, attempts, failure, now)
        return Handled(row.id, "failed"), attempts, failure
    return Handled(row.id, "applied", applied.result, applied.reply), attempts, None


def handle_webhook(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    row_id: int,
    apply: RowApplier,
    *,
    now: datetime | None = None,
    live: bool = True,
    skip_locked: bool = False,
) -> Handled:
    """Apply one stored row, once. ``live``: the HTTP request is still open, so an SMS reply
    goes out in the webhook's answer (a replay records the reply it could not send).

    The row is locked for the whole attempt and its effect is applied inside a savepoint: a
    failure rolls back every write of the effect, and the row records the failure (``attempts``,
    ``retry_at``, the masked ``error``) in the same transaction, still locked, so a concurrent
    replayer never sees a half-recorded attempt."""
    now = now or utcnow()
    try:
        with factory() as session, session.begin():
            row = session.scalar(
                select(InboundEvent)
                .where(InboundEvent.id == row_id, InboundEvent.handled_at.is_(None))
                .with_for_update(skip_locked=skip_locked)
            )
            if row is None:
                return Handled(row_id, "already")
            handled, attempts, failure = _attempt(session, row, config, apply, now, live)
    except Exception as exc:  # the transaction itself failed: nothing could be recorded
        log.warning(
            "webhook row %s not applied, failure not recorded: %s",
            row_id,
            describe_error(exc),
        )
        return Handled(row_id, "failed")
    if failure is not None:
        _log_failed_attempt(row_id, attempts, failure)
    return handled


class DatabaseAway(Exception):
    """A row's failure could not be counted: the database is away, and the replay pass stops
    (``handled``: what this batch did before)."""

    def __init__(self, handled: list[Handled]) -> None:
        super().__init__("the database is away")
        self.handled = handled


def _replay_batch(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    ids: Sequence[int],
    apply: RowApplier,
    now: datetime,
    together: ApplyTogether | None = None,
) -> list[Handled]:
    """Apply a few stored rows in one transaction (one commit for all): runs of rows
    ``together`` takes in one savepoint each, the others each in its own savepoint as
    :func:`handle_webhook` does; rows another replayer holds are skipped.

    One row can fail the whole transaction (a failure no savepoint contains, the connection
    lost while applying it): the rows are then applied one by one, so that the others apply
    and that row's failure is counted, instead of the batch failing, uncounted, on every
    pass. When a row's failure cannot even be counted, the database is away
    (:class:`DatabaseAway`): the rest wait for the next pass instead of each trying again."""
    try:
        return _apply_in_one_transaction(factory, config, ids, apply, now, together)
    except Exception as exc:  # the transaction itself failed: nothing of it was recorded
        failure = describe_error(_first_failure(exc), limit=2000)
    if len(ids) == 1:
        if not _record_lost_attempt(factory, ids[0], now, failure):
            raise DatabaseAway([Handled(ids[0], "failed")])
        return [Handled(ids[0], "failed")]
    log.warning(
        "webhook rows %s to %s not applied together (%s): one by one", ids[0], ids[-1], failure
    )
    results: list[Handled] = []
    for row_id in ids:
        try:
            results += _apply_in_one_transaction(factory, config, [row_id], apply, now)
            continue
        except Exception as exc:
            failure = describe_error(_first_failure(exc), limit=2000)
        results.append(Handled(row_id, "failed"))
        if not _record_lost_attempt(factory, row_id, now, failure):
            raise DatabaseAway(results)
    return results


def _apply_in_one_transaction(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    ids: Sequence[int],
    apply: RowApplier,
    now: datetime,
    together: ApplyTogether | None = None,
) -> list[Handled]:
    """The rows in one transaction, in id order: each run of rows ``together`` takes applied
    together in a savepoint, each other row in a savepoint of its own; raises when the
    transaction itself fails."""
    results: list[Handled] = []
    failures: list[tuple[int, int, str]] = []
    with factory() as session, session.begin():
        rows = session.scalars(
            select(InboundEvent)
            .where(InboundEvent.id.in_(ids), InboundEvent.handled_at.is_(None))
            .order_by(InboundEvent.id)
            .with_for_update(skip_locked=True)
        ).all()

        def one_by_one(singles: Sequence[InboundEvent]) -> None:
            for single in singles:
                handled, attempts, failure = _attempt_fresh(session, single, config, apply, now)
                results.append(handled)
                if failure is not None:
                    failures.append((single.id, attempts, failure))

        run: list[tuple[InboundEvent, DeliveryEvent]] = []
        for row in rows:
            event = together.read(row) if together is not None else None
            if event is not None:
                run.append((row, event))
                continue
            one_by_one(_attempt_run(session, run, config, together, now, results))
            run = []
            one_by_one([row])
        one_by_one(_attempt_run(session, run, config, together, now, results))
    for row_id, attempts, failure in failures:
        _log_failed_attempt(row_id, attempts, failure)
    done = {h.row_id for h in results}
    return results + [Handled(row_id, "already") for row_id in ids if row_id not in done]


def _attempt_fresh(
    session: Session,
    row: InboundEvent,
    config: OperatorConfig,
    apply: RowApplier,
    now: datetime,
) -> tuple[Handled, int, str | None]:
    """:func:`_attempt` for one row of a replay's transaction. It reads what it touches afresh:
    nothing loaded for an earlier row is taken as current."""
    for obj in list(session.identity_map.values()):
        if not isinstance(obj, InboundEvent):
            session.expunge(obj)
    return _attempt(session, row, config, apply, now, False)


def _attempt_run(
    session: Session,
    run: Sequence[tuple[InboundEvent, DeliveryEvent]],
    config: OperatorConfig,
    together: ApplyTogether | None,
    now: datetime,
    results: list[Handled],
) -> list[InboundEvent]:
    """Apply a run of rows together, in a savepoint, and stamp them applied (their outcomes go
    to ``results``). Returns the rows left to apply one by one: none, or the whole run when it
    failed (the savepoint is rolled back, so nothing of it stays)."""
    rows = [row for row, _ in run]
    if together is None or len(run) < 2:  # a row on its own costs no more one by one
        return rows
    try:
        with session.begin_nested():
            outcomes = together.apply(session, [event for _, event in run], config, now)
            _stamp_rows(session, list(zip((row.id for row in rows), outcomes, strict=True)), now)
    except Exception as exc:
        log.warning(
            "webhook rows %s to %s not applied as a run (%s): one by one",
            rows[0].id,
            rows[-1].id,
            describe_error(exc),
        )
        return rows
    results.extend(
        Handled(row.id, "applied", applied.result, applied.reply)
        for row, applied in zip(rows, outcomes, strict=True)
    )
    return []


def _stamp(applied: Applied, now: datetime) -> dict[str, object]:
    """The columns of a row applied: when, the result, no error or retry, and its ties."""
    return {
        "handled_at": now,
        "result": applied.result[:40],
        "error": None,
        "retry_at": None,
        **_ties(applied),
    }


def _stamp_rows(session: Session, applied: Sequence[tuple[int, Applied]], now: datetime) -> None:
    """Stamp rows applied together: one ``UPDATE`` per set of columns (their ties differ)."""
    groups: dict[tuple[str, ...], list[dict[str, object]]] = {}
    for row_id, outcome in applied:
        values = _stamp(outcome, now)
        groups.setdefault(tuple(sorted(values)), []).append({"id": row_id, **values})
    table = cast(Table, InboundEvent.__table__)
    for names, rows in groups.items():
        update_rows(session, table, names, rows)


def _first_failure(exc: BaseException) -> BaseException:
    """The failure that broke the transaction, not the refusal of the statements after it
    (recording the failure in a transaction already lost raises ``PendingRollbackError``)."""
    while isinstance(exc, PendingRollbackError) and exc.__context__ is not None:
        exc = exc.__context__
    return exc


def _record_lost_attempt(
    factory: sessionmaker[Session], row_id: int, now: datetime, failure: str
) -> bool:
    """Count a failed attempt whose own transaction could not record it, in a transaction of
    its own: the row then backs off and, after :data:`REPLAY_MAX_ATTEMPTS`, is left for an
    operator, like any other failure. When even this fails (the database is away), the attempt
    is not counted: the row is tried again at the next pass. Whether the database answered."""
    try:
        with factory() as session, session.begin():
            attempts = session.scalar(
                select(InboundEvent.attempts)
                .where(InboundEvent.id == row_id, InboundEvent.handled_at.is_(None))
                .with_for_update(skip_locked=True)
            )
            if attempts is None:  # applied or held by another replayer meanwhile
                return True
            attempts += 1
            _count_failure(session, row_id, attempts, failure, now)
    except Exception as exc:
        log.warning(
            "webhook row %s not applied, failure not recorded: %s", row_id, describe_error(exc)
        )
        return False
    _log_failed_attempt(row_id, attempts, failure)
    return True


def _ties(applied: Applied) -> dict[str, object]:
    """What an applied raw row keeps: its payload only while it is tied to a survey or a
    customer, which is where erasure looks for it. An event that matched no one (an SMS from an
    unknown number, a SendGrid event for no survey) or that was about an erased customer keeps
    the provider's event id, type and result, and no payload."""
    if applied.erased:
        return {"payload": None}
    if applied.survey_id is None and applied.subject_key is None:
        return {"payload": None}
    ties: dict[str, object] = {}
    if applied.survey_id is not None:
        ties["survey_id"] = applied.survey_id
    if applied.subject_key is not None:
        ties["subject_key"] = applied.subject_key
    return ties


def _log_failed_attempt(row_id: int, attempts: int, failure: str) -> None:
    if attempts >= REPLAY_MAX_ATTEMPTS:
        log.error(
            "ALERT webhook row %s: given up after %s failed attempts (kept, not replayed): %s",
            row_id,
            attempts,
            failure[:300],
        )
    else:
        log.warning(
            "webhook row %s not applied (attempt %s; replayed in %s): %s",
            row_id,
            attempts,
            replay_pause(attempts),
            failure[:300],
        )


def ingest_webhooks(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    raws: Sequence[RawWebhook],
    apply: RowApplier,
    *,
    now: datetime | None = None,
) -> list[Handled]:
    """Store, then process: what every webhook route calls after verifying the signature."""
    results: list[Handled] = []
    for item in store_webhooks(factory, raws):
        if not item.pending:
            results.append(Handled(item.row_id, "duplicate"))
        else:
            results.append(handle_webhook(factory, config, item.row_id, apply, now=now))
    return results


def replay_unhandled_webhooks(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    apply: RowApplier,
    *,
    now: datetime | None = None,
    older_than: timedelta = timedelta(minutes=1),
    limit: int = 500,
    budget_seconds: float = 2.0,
    together: ApplyTogether | None = None,
) -> ReplayReport:
    """Apply stored provider webhooks that are not applied yet (``handled_at`` null), in arrival
    order: those the webhook route left for later (``retry_at`` is their arrival, so at once),
    those whose application failed once their back-off has passed (``retry_at``), and those
    never attempted although their request meant to (``retry_at`` null: a process died between
    storing and applying), once older than ``older_than``, which leaves them to the request
    that stored them until then. Rows that failed :data:`REPLAY_MAX_ATTEMPTS` times are left
    alone, with their error, for an operator. Safe to run from several schedulers at once (rows
    are taken with ``SKIP LOCKED``). Rows are read ``limit`` at a time, and more are read while
    the call has run less than ``budget_seconds``, so a backlog drains over a few passes
    without holding up the scheduler's other steps. With ``together``, runs of rows it takes
    are applied together, with a fixed number of statements each (:class:`ApplyTogether`)."""
    now = now or utcnow()
    report = ReplayReport()
    started = time.monotonic()
    after = 0
    while True:
        with factory() as session:
            ids = list(
                session.scalars(
                    select(InboundEvent.id)
                    .where(
                        InboundEvent.id > after,
                        InboundEvent.source.in_(WEBHOOK_SOURCES),
                        InboundEvent.handled_at.is_(None),
                        InboundEvent.attempts < REPLAY_MAX_ATTEMPTS,
                        or_(
                            InboundEvent.retry_at <= now,
                            and_(
                                InboundEvent.retry_at.is_(None),
                                InboundEvent.received_at <= now - older_than,
                            ),
                        ),
                    )
                    .order_by(InboundEvent.id)
                    .limit(limit)
                )
            )
        away = False
        for start in range(0, len(ids), REPLAY_BATCH):
            try:
                handled_rows = _replay_batch(
                    factory, config, ids[start : start + REPLAY_BATCH], apply, now, together
                )
            except DatabaseAway as exc:
                handled_rows, away = exc.handled, True
            for handled in handled_rows:
                if handled.status == "applied":
                    report.applied += 1
                elif handled.status == "failed":
                    report.failed += 1
                else:
                    report.skipped += 1
            if away:  # the rest waits for the next pass
                break
        # A full load may leave more behind: take the next while the pass has time left.
        if away or len(ids) < limit or time.monotonic() - started >= budget_seconds:
            break
        after = ids[-1]
    if report.applied or report.failed:
        log.info(
            "webhook replay: %s applied, %s failed, %s skipped",
            report.applied,
            report.failed,
            report.skipped,
        )
    return report


def given_up_webhooks(session: Session) -> int:
    """Stored webhooks no longer replayed: :data:`REPLAY_MAX_ATTEMPTS` applications failed."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(InboundEvent)
            .where(
                InboundEvent.source.in_(WEBHOOK_SOURCES),
                InboundEvent.handled_at.is_(None),
                InboundEvent.attempts >= REPLAY_MAX_ATTEMPTS,
            )
        )
        or 0
    )
