"""One validation and one idempotency for every path in: queue, HTTP and file.

Each event is validated (nothing is written for a bad one), then claimed in the inbound ledger
under its ``event_id`` with a fingerprint of its content, in the same transaction as its effect.
The same ``event_id`` again is a duplicate when the content matches and a conflict when it does
not; either way it changes nothing. A batch's purchases and anchor events are applied as sets,
a fixed number of statements per run of them (``ingest.batch``); the other events one by one,
each in its own savepoint, in their place. When applying the set fails, the batch is rolled
back and applied event by event, so that only the event at fault is answered as a rejection and
the others still commit.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig
from ingest import apply, erasure, outcome
from ingest.apply import SHOP_SOURCE
from ingest.batch import RUN_TYPES, Done, RunItem, apply_run
from ingest.failures import (
    TransientFailure,
    failure_label,
    transient,
)
from ingest.letters import store_dead_letter
from ingest.outcome import Outcome
from ingest.schema import (
    EVENT_TYPES,
    ConsentEvent,
    CustomerErased,
    EventRejected,
    FieldError,
    OrderEvent,
    PurchaseCompleted,
    event_id_of,
    fingerprint,
    parse_event,
)
from logs.metrics import EVENTS
from models import InboundEvent, utcnow
from models.erasure import subject_key
from models.inbound import claim_inbound_event

__all__ = [
    "APPLY_FAILED",
    "APPLY_FAILED_REASON",
    "SHOP_SOURCE",
    "TRANSIENT_ATTEMPTS",
    "IngestResult",
    "ShopEvent",
    "Status",
    "failure_label",
    "ingest_batch",
    "ingest_event",
    "ingest_in_session",
    "store_dead_letter",
]

log = logging.getLogger(__name__)

TRANSIENT_ATTEMPTS = 3
Status = Literal["accepted", "duplicate", "conflict", "rejected"]

# What the client is told when applying failed on our side: nothing about the cause (a database
# error quotes its SQL and the values bound to it), only that nothing was kept.
APPLY_FAILED_REASON = (
    "could not be applied because of an error on our side; nothing of it was stored, "
    "so it is safe to send it again"
)
APPLY_FAILED = f"(event): {APPLY_FAILED_REASON}"


@dataclass(frozen=True, slots=True)
class IngestResult:
    event_id: str | None
    status: Status
    error: str | None = None  # one line: "field.path: reason; ..."
    outcome: str | None = None  # what the event did, in words, for the CLI and the logs
    # Rejected because applying it failed on our side, not because of its content: the same
    # event sent again may well be taken.
    retryable: bool = False
    errors: tuple[FieldError, ...] = ()  # one per problem, with its code and field path
    effect: Outcome | None = None  # what an accepted event did, read back from the database
    event_type: str | None = None  # when known, for the log line and the events metric

    def problems(self) -> tuple[FieldError, ...]:
        """The structured errors; a result built from a bare message gets one without a path."""
        if self.errors or self.error is None:
            return self.errors
        return (FieldError("invalid_event", self.error),)

    def to_dict(self) -> dict[str, Any]:
        """The per-item answer: ``event_id``, ``status``, then ``error`` (the summary line) and
        ``errors`` when it was not taken, or ``outcome`` when it was accepted."""
        out: dict[str, Any] = {"event_id": self.event_id, "status": self.status}
        if self.error is not None:
            out["error"] = self.error
            out["errors"] = [problem.to_dict() for problem in self.problems()]
        if self.effect is not None:
            out["outcome"] = self.effect.model_dump(mode="json")
        return out


ShopEvent = PurchaseCompleted | OrderEvent | ConsentEvent | CustomerErased


def _subject(event: ShopEvent) -> str | None:
    """The ledger's subject key: the keyed pseudonym of the event's customer id, never the id."""
    customer_id = getattr(getattr(event, "customer", None), "id", None)
    return subject_key(customer_id) if customer_id is not None else None


def _apply(session: Session, event: ShopEvent, ctx: apply.ApplyContext) -> str:
    if isinstance(event, PurchaseCompleted):
        return apply.apply_purchase(session, event, ctx)
    if isinstance(event, OrderEvent):
        return apply.apply_order_event(session, event, ctx)
    if isinstance(event, ConsentEvent):
        return apply.apply_consent_event(session, event, ctx)
    return erasure.apply_erasure(session, event, ctx)


def _repeated(session: Session, event: ShopEvent, digest: str) -> IngestResult:
    """The ``event_id`` is in the ledger already: the same event again, or another one?"""
    recorded = session.execute(
        select(InboundEvent.fingerprint, InboundEvent.event_type).where(
            InboundEvent.source == SHOP_SOURCE, InboundEvent.external_id == event.event_id
        )
    ).one_or_none()
    if recorded is None:
        return _repeated_as(event, digest, None, None)
    return _repeated_as(event, digest, recorded.fingerprint, recorded.event_type)


def _repeated_as(
    event: ShopEvent, digest: str, recorded_digest: str | None, recorded_type: str | None
) -> IngestResult:
    # Rows recorded before fingerprints were kept have none: taken as the same event.
    if recorded_digest in (None, digest):
        return IngestResult(
            event.event_id, "duplicate", outcome="already applied", event_type=event.type
        )
    log.warning(
        "event %s (%s) conflicts with the %s recorded under the same event_id",
        event.event_id,
        event.type,
        recorded_type,
    )
    problem = FieldError(
        "conflict",
        f"already used by a different event (a {recorded_type}); nothing was applied; "
        "give each event its own event_id",
        "event_id",
    )
    return IngestResult(
        event.event_id,
        "conflict",
        error=problem.line(),
        outcome="conflict",
        errors=(problem,),
        event_type=event.type,
    )


def _parse(raw: Any, now: datetime) -> tuple[ShopEvent, str] | IngestResult:
    """The validated event and its content digest, or its rejection."""
    try:
        event = parse_event(raw, now=now)
    except EventRejected as exc:
        kind = raw.get("type") if isinstance(raw, dict) else None
        return IngestResult(
            event_id_of(raw),
            "rejected",
            error=str(exc),
            errors=tuple(exc.errors),
            event_type=kind if kind in EVENT_TYPES else None,
        )
    return event, fingerprint(event)


def ingest_in_session(
    session: Session,
    raw: Any,
    config: OperatorConfig,
    now: datetime | None = None,
    *,
    raise_transient: bool = False,
    log_accepted: bool = True,
) -> IngestResult:
    """Validate and apply one event inside a SAVEPOINT of ``session``.

    With ``raise_transient``, a deadlock or serialisation failure is raised (as
    ``TransientFailure``) for the caller to retry the whole transaction, instead of being
    answered as this event's rejection. ``log_accepted=False`` leaves the "accepted" line to
    the caller, to be written once the transaction has committed."""
    now = now or utcnow()
    parsed = _parse(raw, now)
    if isinstance(parsed, IngestResult):
        return parsed
    event, digest = parsed
    ctx = apply.ApplyContext(config=config, now=now)
    result = _apply_one(session, event, digest, ctx, raise_transient=raise_transient)
    if log_accepted and result.status == "accepted":
        log.info("event %s (%s) accepted: %s", event.event_id, event.type, result.outcome)
    return result


def _apply_one(
    session: Session,
    event: ShopEvent,
    digest: str,
    ctx: apply.ApplyContext,
    *,
    raise_transient: bool,
) -> IngestResult:
    try:
        with session.begin_nested():
            claimed = claim_inbound_event(
                session,
                source=SHOP_SOURCE,
                external_id=event.event_id,
                event_type=event.type,
                subject_key=_subject(event),
                fingerprint=digest,
            )
            if claimed is None:
                return _repeated(session, event, digest)
            was = outcome.before(session, event)
            said = _apply(session, event, ctx)
            effect = outcome.after(session, event, was)
    except Exception as exc:
        # The savepoint is rolled back (on PostgreSQL this also clears the aborted state), so
        # the events before and after this one in the transaction are unaffected.
        label = failure_label(exc)
        if raise_transient and transient(exc):
            raise TransientFailure(label) from exc
        log.error("event %s (%s) not applied, nothing kept: %s", event.event_id, event.type, label)
        return IngestResult(
            event.event_id,
            "rejected",
            error=APPLY_FAILED,
            outcome=label,
            retryable=True,
            errors=(FieldError("internal_error", APPLY_FAILED_REASON),),
            event_type=event.type,
        )
    return IngestResult(
        event.event_id, "accepted", outcome=said, effect=effect, event_type=event.type
    )


def _ingest_set(
    session: Session,
    raws: list[Any],
    config: OperatorConfig,
    now: datetime,
    *,
    raise_transient: bool,
) -> list[IngestResult]:
    """Apply a batch in runs (``ingest.batch``): purchases and anchor events together, a fixed
    number of statements per run; any other event alone, in its own savepoint, in its place.

    A run holds at most one event per order and per event id, so that each event of a run sees
    the rows as the events before it left them; a second one starts the next run."""
    ctx = apply.ApplyContext(config=config, now=now)
    results: list[IngestResult | None] = [None] * len(raws)
    run: list[tuple[int, RunItem]] = []
    orders: set[str] = set()
    ids: set[str] = set()

    def flush() -> None:
        if not run:
            return
        done = apply_run(session, [item for _, item in run], ctx)
        for (index, item), did in zip(run, done, strict=True):
            results[index] = _result_of(item, did)
        run.clear()
        orders.clear()
        ids.clear()

    for index, raw in enumerate(raws):
        parsed = _parse(raw, now)
        if isinstance(parsed, IngestResult):
            results[index] = parsed
            continue
        event, digest = parsed
        if isinstance(event, PurchaseCompleted | OrderEvent) and event.type in RUN_TYPES:
            if event.event_id in ids or event.order_id in orders:
                flush()
            run.append((index, RunItem(event, digest, _subject(event))))
            ids.add(event.event_id)
            orders.add(event.order_id)
            continue
        flush()
        results[index] = _apply_one(session, event, digest, ctx, raise_transient=raise_transient)
    flush()
    return [r for r in results if r is not None]


def _result_of(item: RunItem, did: Done) -> IngestResult:
    event = item.event
    if did.recorded is not None:
        return _repeated_as(event, item.digest, *did.recorded)
    return IngestResult(
        event.event_id, "accepted", outcome=did.said, effect=did.effect, event_type=event.type
    )


def ingest_event(
    factory: sessionmaker[Session], raw: Any, config: OperatorConfig, now: datetime | None = None
) -> IngestResult:
    return ingest_batch(factory, [raw], config, now)[0]


def ingest_batch(
    factory: sessionmaker[Session],
    raws: Iterable[Any],
    config: OperatorConfig,
    now: datetime | None = None,
) -> list[IngestResult]:
    """Apply a batch in one transaction and one commit: purchases and anchor events as sets
    (:func:`_ingest_set`), the others each in its own savepoint.

    When applying the set fails, the transaction is rolled back and the batch applied again
    event by event, each in its own savepoint, so that only the event at fault is rejected.
    A deadlock rolls the whole batch back and runs it again: rolling back only the event that
    hit it would keep the rows the batch's earlier events locked, so the other transaction in
    the cycle would still wait on them and the retried event would deadlock again. On the last
    attempt the event that hits it is answered rejected (retryable) and the others commit.
    """
    now = now or utcnow()
    raws = list(raws)
    attempt = 1
    one_by_one = False
    while True:
        last = attempt >= TRANSIENT_ATTEMPTS
        try:
            with factory() as session, session.begin():
                if one_by_one:
                    results = [
                        ingest_in_session(
                            session, raw, config, now, raise_transient=not last, log_accepted=False
                        )
                        for raw in raws
                    ]
                else:
                    results = _ingest_set(session, raws, config, now, raise_transient=not last)
        except TransientFailure as exc:
            _retry_later(len(raws), str(exc), attempt)
            attempt += 1
            continue
        except Exception as exc:
            if one_by_one:
                raise
            if transient(exc) and not last:
                _retry_later(len(raws), failure_label(exc), attempt)
                attempt += 1
                continue
            log.warning(
                "batch of %d events not applied as a set (%s): applying them one by one",
                len(raws),
                failure_label(exc),
            )
            one_by_one = True
            continue
        _committed(results)
        return results


def _retry_later(size: int, label: str, attempt: int) -> None:
    log.warning("batch of %d events rolled back and retried: %s", size, label)
    time.sleep(random.uniform(0.05, 0.25) * attempt)  # noqa: S311 - jitter only


def _committed(results: list[IngestResult]) -> None:
    """Once the batch has committed (an attempt rolled back must not have said "accepted"):
    one line per event at DEBUG, one for the batch at INFO, and the events metric."""
    counts: Counter[str] = Counter()
    for result in results:
        if result.status == "accepted":
            log.debug(
                "event %s (%s) accepted: %s", result.event_id, result.event_type, result.outcome
            )
        label = "failed" if result.status == "rejected" and result.retryable else result.status
        counts[label] += 1
        EVENTS.labels(type=result.event_type or "invalid", outcome=label).inc()
    log.info(
        "batch of %d events: %s",
        len(results),
        ", ".join(f"{n} {label}" for label, n in sorted(counts.items())),
    )
