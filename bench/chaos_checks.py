"""The chaos run's verdict: the product's promises checked against the fake provider's own log,
the shop's plan and the database, after the run.

- **Never twice**: messages the provider created per survey <= 1 invitation + the configured
  reminders, and no two of them closer than the reminder delay (a repeated invitation).
- **Never without consent**: no message created although the recipient's consent for that
  channel was revoked in the consent history rows (latest by capture time, as the product
  decides) that the product could see at its last check before the send.
- **Never to the erased**: no message after the customer's erasure could be seen, and nothing
  personal left about them (message ids, bodies, comments, raw webhooks).
- **Nothing lost**: every purchase has a survey or a skip reason; every survey is in a final state
  once the windows have closed; every shop event is in the ledger (or a dead letter); every
  provider webhook stored was applied.
- **Answers once**: no more answer rows than answers the customers gave.
- **Report = database**: the report's counts equal direct SQL counts.

"Could see" is "committed before": a revocation written inside a transaction that commits
seconds later (a batch of events, a wait for a lock) is invisible until then. The run watches
the ledger for each revocation, cancellation and erasure it sends and notes when it appears
(``visible_at``); other consent rows (replies, unsubscribes) are committed as they are written.
The product's last check is, for an invitation, the moment it was claimed for sending (its
``sending`` transition); for a reminder, which leaves no transition, :data:`REMINDER_GRACE`
before the provider received it. A message whose revocation or erasure became visible only
after that check, but before the provider received it, raced a send already under way: no
product can win that race, so it is counted apart (``in_flight``), not as a violation.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from bench.chaos_shop import ShopPlan
from bench.fakes.provider import TWILIO, Attempt, Message
from config import OperatorConfig
from models import (
    Answer,
    ConsentRecord,
    Customer,
    DeadLetter,
    InboundEvent,
    MessageRecord,
    Order,
    SkippedPurchase,
    Survey,
    SurveyTransition,
)
from models.lifecycle import (
    ANSWERED_STATES,
    DISPOSITION_OF,
    FINAL_STATES,
    INVITED_STATES,
    OPEN_STATES,
    SurveyState,
)
from reports.build import build_report

__all__ = ["REMINDER_GRACE", "Verdict", "verify"]

REMINDER_GRACE = 2.0
"""Seconds between a reminder's last consent check and the provider call, at most (the
reminder is claimed, rendered and sent in one go; the run's rate limits never make it wait)."""

SEND_WINDOW = 15.0
"""A provider request received within this many seconds of a ``sending`` transition belongs to
that send attempt (the client's timeout is 10 s)."""

TWICE_TOLERANCE = 2.0
"""Seconds a reminder may seem early: the product counts its delay from the start of the send,
the provider from the moment the request arrived."""

MAX_EXAMPLES = 5
_BEFORE_SEND = ("waiting_anchor", "scheduled", "queued", "sending")


@dataclass
class Verdict:
    violations: dict[str, int]
    figures: dict[str, Any]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return any(self.violations.values())


def _epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class _Consent:
    captured: float
    id: int
    granted: bool
    recorded: float  # written, inside its transaction
    ref: str | None  # the shop event that brought it, if one did

    def known(self, visible: Mapping[str, float]) -> float:
        """When the product could see it: once committed. For a shop event the run watched,
        the moment it saw the event in the ledger; else the moment it was written (webhooks and
        answer-page requests commit right after)."""
        return visible.get(self.ref, self.recorded) if self.ref else self.recorded


@dataclass
class _Db:
    """What the checks read from the database, once."""

    survey_order: dict[int, str]
    survey_customer: dict[int, int]
    survey_state: dict[int, str]
    survey_closes: dict[int, float | None]
    order_survey: dict[str, int]
    transitions: dict[int, list[tuple[float, str, str, str | None]]]
    consent: dict[tuple[int, str], list[_Consent]]
    ledger: dict[str, float]
    orders: dict[str, bool]  # external id -> purchased
    skipped: set[str]
    answers: Counter[int]
    dead_letters: set[str]
    unapplied_webhooks: int
    skip_reasons: Counter[str]
    erased_left: dict[str, list[int]]  # table -> survey ids of erased customers with data left


def _load(session: Session) -> _Db:
    rows = session.execute(
        select(
            Survey.id, Order.external_id, Survey.customer_id, Survey.state, Survey.closes_at
        ).join(Order, Order.id == Survey.order_id)
    ).all()
    transitions: dict[int, list[tuple[float, str, str, str | None]]] = defaultdict(list)
    for sid, at, source, target, reason in session.execute(
        select(
            SurveyTransition.survey_id,
            SurveyTransition.at,
            SurveyTransition.from_state,
            SurveyTransition.to_state,
            SurveyTransition.reason,
        ).order_by(SurveyTransition.at, SurveyTransition.id)
    ):
        transitions[sid].append((_epoch(at) or 0.0, source, target, reason))
    consent: dict[tuple[int, str], list[_Consent]] = defaultdict(list)
    for cid, channel, granted, captured, recorded, rid, kind, ref in session.execute(
        select(
            ConsentRecord.customer_id,
            ConsentRecord.channel,
            ConsentRecord.granted,
            ConsentRecord.captured_at,
            ConsentRecord.recorded_at,
            ConsentRecord.id,
            ConsentRecord.evidence_kind,
            ConsentRecord.evidence_ref,
        )
    ):
        consent[(cid, channel)].append(
            _Consent(
                _epoch(captured) or 0.0,
                rid,
                bool(granted),
                _epoch(recorded) or 0.0,
                str(ref) if kind == "event" and ref else None,
            )
        )
    ledger = {
        str(eid): _epoch(at) or 0.0
        for eid, at in session.execute(
            select(InboundEvent.external_id, InboundEvent.received_at).where(
                InboundEvent.source == "shop"
            )
        )
    }
    orders = {
        str(eid): purchased is not None
        for eid, purchased in session.execute(select(Order.external_id, Order.purchased_at))
    }
    skipped_rows = session.execute(
        select(Order.external_id, SkippedPurchase.reason).join(
            Order, Order.id == SkippedPurchase.order_id
        )
    ).all()
    answers = Counter(
        {
            int(sid): int(n)
            for sid, n in session.execute(
                select(Answer.survey_id, func.count()).group_by(Answer.survey_id)
            )
        }
    )
    dead = {str(e) for e in session.scalars(select(DeadLetter.event_id)) if e}
    unapplied = int(
        session.scalar(
            select(func.count())
            .select_from(InboundEvent)
            .where(InboundEvent.source != "shop", InboundEvent.handled_at.is_(None))
        )
        or 0
    )
    erased_surveys = (
        select(Survey.id)
        .join(Customer, Customer.id == Survey.customer_id)
        .where(Customer.erased_at.is_not(None))
    )
    leftovers = {
        "surveys": select(Survey.id).where(
            Survey.id.in_(erased_surveys),
            or_(Survey.provider_message_id.is_not(None), Survey.comment.is_not(None)),
        ),
        "messages": select(MessageRecord.survey_id).where(
            MessageRecord.survey_id.in_(erased_surveys),
            or_(MessageRecord.body.is_not(None), MessageRecord.provider_message_id.is_not(None)),
        ),
        "answers": select(Answer.survey_id).where(
            Answer.survey_id.in_(erased_surveys), Answer.comment.is_not(None)
        ),
        "webhook payloads": select(InboundEvent.survey_id).where(
            InboundEvent.survey_id.in_(erased_surveys), InboundEvent.payload.is_not(None)
        ),
    }
    erased_left = {
        table: [int(sid) for sid in session.scalars(query) if sid is not None]
        for table, query in leftovers.items()
    }
    return _Db(
        erased_left={k: v for k, v in erased_left.items() if v},
        survey_order={r[0]: str(r[1]) for r in rows},
        survey_customer={r[0]: int(r[2]) for r in rows},
        survey_state={r[0]: str(r[3]) for r in rows},
        survey_closes={r[0]: _epoch(r[4]) for r in rows},
        order_survey={str(r[1]): r[0] for r in rows},
        transitions=dict(transitions),
        consent=dict(consent),
        ledger=ledger,
        orders=orders,
        skipped={str(r[0]) for r in skipped_rows},
        answers=answers,
        dead_letters=dead,
        unapplied_webhooks=unapplied,
        skip_reasons=Counter(str(r[1]) for r in skipped_rows),
    )


class _Examples:
    def __init__(self, db: _Db, attempts: Sequence[Attempt]) -> None:
        self.db = db
        self.by_survey: dict[int, list[Attempt]] = defaultdict(list)
        for attempt in attempts:
            if attempt.survey_id is not None:
                self.by_survey[attempt.survey_id].append(attempt)
        self.found: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, kind: str, survey_id: int | None, **extra: Any) -> None:
        if len(self.found[kind]) >= MAX_EXAMPLES:
            return
        entry: dict[str, Any] = {"survey_id": survey_id, **extra}
        if survey_id is not None:
            entry["state"] = self.db.survey_state.get(survey_id)
            entry["transitions"] = [
                [_iso(at), source, target, reason]
                for at, source, target, reason in self.db.transitions.get(survey_id, [])
            ]
            entry["provider_log"] = [
                [_iso(a.received_at), a.provider, a.outcome, a.message_id]
                for a in sorted(self.by_survey.get(survey_id, []), key=lambda a: a.received_at)
            ]
        self.found[kind].append(entry)


def _last_claim(db: _Db, survey_id: int, before: float) -> float | None:
    """When the product last claimed this survey for sending before ``before``."""
    claims = [at for at, _, target, _ in db.transitions.get(survey_id, []) if target == "sending"]
    i = bisect.bisect_right(claims, before)
    return claims[i - 1] if i else None


def _last_check(db: _Db, survey_id: int, received: float) -> float:
    claim = _last_claim(db, survey_id, received)
    if claim is not None and received - claim <= SEND_WINDOW:
        return claim
    return received - REMINDER_GRACE


def _consent_at(records: Iterable[_Consent]) -> tuple[bool, _Consent | None]:
    """The consent the product reads from these records (the latest by capture time), and the
    record that decides it; no record at all is no consent."""
    latest = max(records, key=lambda r: (r.captured, r.id), default=None)
    return (latest.granted if latest is not None else False), latest


def verify(
    factory: sessionmaker[Session],
    config: OperatorConfig,
    plan: ShopPlan,
    messages: Sequence[Message],
    attempts: Sequence[Attempt],
    acts: Mapping[int, Sequence[str]],
    now: datetime,
    queued_events: frozenset[str] | set[str] = frozenset(),
    visible_at: Mapping[str, float] | None = None,
) -> Verdict:
    visible = visible_at or {}
    with factory() as session:
        db = _load(session)
    examples = _Examples(db, attempts)
    violations: dict[str, int] = {}
    figures: dict[str, Any] = {}

    # -- never twice ---------------------------------------------------------------------------
    limit = 1 + config.survey.reminder.max
    per_survey = Counter(m.survey_id for m in messages if m.survey_id is not None)
    over = {sid: n for sid, n in per_survey.items() if n > limit}
    for sid, n in sorted(over.items())[:MAX_EXAMPLES]:
        examples.add("surveys_over_message_limit", sid, messages=n)
    violations["surveys_over_message_limit"] = len(over)
    figures["messages_over_limit"] = sum(n - limit for n in over.values())
    # Stricter: a reminder never follows its invitation sooner than the configured delay, so
    # two messages closer than that are one message twice, even when the count stays within
    # the limit (a repeated invitation whose reminder was not needed).
    reminder = config.survey.reminder
    closest = reminder.after.total_seconds() - TWICE_TOLERANCE if reminder.max else float("inf")
    times: dict[int, list[float]] = defaultdict(list)
    for m in messages:
        if m.survey_id is not None:
            times[m.survey_id].append(m.received_at)
    repeated = sorted(
        sid
        for sid, seen in times.items()
        if any(b - a < closest for a, b in zip(sorted(seen), sorted(seen)[1:], strict=False))
    )
    for sid in repeated[:MAX_EXAMPLES]:
        examples.add("surveys_sent_twice", sid, messages=len(times[sid]))
    violations["surveys_sent_twice"] = len(repeated)
    figures["messages_without_survey_id"] = sum(1 for m in messages if m.survey_id is None)

    # -- never without consent, never to the erased --------------------------------------------
    erased_at = {key: db.ledger[eid] for key, eid in plan.erasures.items() if eid in db.ledger}
    no_consent = in_flight_consent = after_erasure = in_flight_erasure = 0
    for m in messages:
        if m.survey_id is None or m.survey_id not in db.survey_customer:
            continue
        channel = "sms" if m.provider == TWILIO else "email"
        records = db.consent.get((db.survey_customer[m.survey_id], channel), [])
        check = _last_check(db, m.survey_id, m.received_at)
        granted, decided = _consent_at(r for r in records if r.known(visible) <= check)
        if not granted:
            no_consent += 1
            examples.add(
                "sent_without_consent",
                m.survey_id,
                channel=channel,
                provider_received=_iso(m.received_at),
                product_checked=_iso(check),
                revocation_visible=_iso(decided.known(visible)) if decided else None,
            )
        elif not _consent_at(r for r in records if r.recorded <= m.received_at)[0]:
            in_flight_consent += 1
        order = plan.orders.get(db.survey_order[m.survey_id])
        if order is None or order.customer not in erased_at:
            continue
        if plan.erased_at[order.customer] < order.purchased_at:
            continue  # a purchase after the erasure: a customer again
        erased = erased_at[order.customer]
        if m.received_at <= erased:
            continue
        known = visible.get(plan.erasures[order.customer], erased)
        if known < check:
            after_erasure += 1
            examples.add(
                "sent_after_erasure",
                m.survey_id,
                provider_received=_iso(m.received_at),
                product_checked=_iso(check),
                erasure_visible=_iso(known),
            )
        else:
            in_flight_erasure += 1
    violations["sent_without_consent"] = no_consent
    violations["sent_after_erasure"] = after_erasure
    # Erasure keeps counts, not people: no contact, message id, body or comment may remain
    # (or be written again by a late callback or reply) for an erased customer's surveys.
    for table, survey_ids in db.erased_left.items():
        for sid in sorted(set(survey_ids))[:2]:
            order = plan.orders.get(db.survey_order[sid])
            erasure = erased_at.get(order.customer) if order else None
            examples.add("erased_data_left", sid, table=table, erasure_recorded=_iso(erasure))
    violations["erased_data_left"] = sum(len(v) for v in db.erased_left.values())
    figures["erased_data_left_by_table"] = {k: len(v) for k, v in db.erased_left.items()}
    figures["in_flight_at_revocation"] = in_flight_consent
    figures["in_flight_at_erasure"] = in_flight_erasure

    # -- nothing lost --------------------------------------------------------------------------
    missing = [
        o
        for o in plan.orders
        if not db.orders.get(o) or (o not in db.order_survey and o not in db.skipped)
    ]
    for order_id in missing[:MAX_EXAMPLES]:
        examples.add("purchases_without_outcome", None, order=order_id, in_db=order_id in db.orders)
    violations["purchases_without_outcome"] = len(missing)

    not_final = {
        sid: state
        for sid, state in db.survey_state.items()
        if SurveyState(state) not in FINAL_STATES
    }
    for sid in sorted(not_final)[:MAX_EXAMPLES]:
        examples.add("surveys_not_final", sid)
    violations["surveys_not_final"] = len(not_final)
    figures["not_final_by_state"] = dict(Counter(not_final.values()))

    planned_ids = {e.event_id for e in plan.events}
    lost = sorted(planned_ids - db.ledger.keys() - db.dead_letters)
    for event_id in lost[:MAX_EXAMPLES]:
        examples.add("events_not_recorded", None, event_id=event_id)
    violations["events_not_recorded"] = len(lost)
    figures["events_not_recorded_still_in_redis"] = len(set(lost) & set(queued_events))
    violations["dead_letters"] = len(db.dead_letters & planned_ids)
    violations["webhooks_not_applied"] = db.unapplied_webhooks

    # -- answers once --------------------------------------------------------------------------
    rows_by_customer: Counter[int] = Counter()
    acts_by_customer: Counter[int] = Counter()
    for sid, n in db.answers.items():
        rows_by_customer[db.survey_customer.get(sid, -sid)] += n
    for sid, given in acts.items():
        acts_by_customer[db.survey_customer.get(sid, -sid)] += len(given)
    twice = {
        c: rows_by_customer[c] - acts_by_customer[c]
        for c in rows_by_customer
        if rows_by_customer[c] > acts_by_customer[c]
    }
    survey_of_customer = {c: s for s, c in db.survey_customer.items()}
    for customer in sorted(twice)[:MAX_EXAMPLES]:
        examples.add(
            "answers_stored_twice", survey_of_customer.get(customer), extra_rows=twice[customer]
        )
    violations["answers_stored_twice"] = sum(twice.values())
    figures["answers_given"] = sum(len(v) for v in acts.values())
    figures["answer_rows"] = sum(db.answers.values())

    # -- report = database ---------------------------------------------------------------------
    mismatches = _compare_report(factory, config, now)
    for key, (reported, counted) in list(mismatches.items())[:MAX_EXAMPLES]:
        examples.add("report_mismatches", None, key=key, report=reported, sql=counted)
    violations["report_mismatches"] = len(mismatches)

    # A send whose outcome the product could not establish: did the message exist after all?
    unknown = [sid for sid, state in db.survey_state.items() if state == "send_unknown"]
    figures["send_unknown"] = {
        "message_created": sum(1 for sid in unknown if per_survey[sid]),
        "nothing_created": sum(1 for sid in unknown if not per_survey[sid]),
    }
    figures["surveys_by_state"] = dict(sorted(Counter(db.survey_state.values()).items()))
    figures["skip_reasons"] = dict(sorted(db.skip_reasons.items()))
    figures["disruptions_landed"] = _landings(plan, db)
    return Verdict(violations, figures, dict(examples.found))


def _landings(plan: ShopPlan, db: _Db) -> dict[str, dict[str, int]]:
    """When each cancellation, revocation and erasure reached us, relative to its order's send:
    before the claim, during the provider call, after it, or for a purchase never surveyed."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for order in plan.orders.values():
        survey_id = db.order_survey.get(order.order_id)
        for kind, _, event_id in order.disruptions:
            arrived = db.ledger.get(event_id)
            if arrived is None:
                out[kind]["not recorded"] += 1
                continue
            if survey_id is None:
                out[kind]["no survey"] += 1
                continue
            steps = db.transitions.get(survey_id, [])
            claimed = next((at for at, _, target, _ in steps if target == "sending"), None)
            left = next(
                (
                    at
                    for at, source, _, _ in steps
                    if source == "sending" and claimed and at >= claimed
                ),
                None,
            )
            if claimed is None or arrived < claimed:
                out[kind]["before the send"] += 1
            elif left is None or arrived < left:
                out[kind]["during the send"] += 1
            else:
                out[kind]["after the send"] += 1
    return {kind: dict(sorted(counts.items())) for kind, counts in sorted(out.items())}


def _sql_counts(session: Session, config: OperatorConfig, now: datetime) -> dict[str, int]:
    purchased = Order.purchased_at.is_not(None)
    counts: dict[str, int] = {
        "n_purchases": int(
            session.scalar(select(func.count()).select_from(Order).where(purchased)) or 0
        )
    }
    rows = session.execute(
        select(Survey.state, Survey.closes_at, Survey.score)
        .join(Order, Order.id == Survey.order_id)
        .where(purchased)
    ).all()
    bands = config.survey.bands
    disp: Counter[str] = Counter()
    band_counts: Counter[str] = Counter()
    invited = answered = 0
    for state, closes_at, score in rows:
        s = SurveyState(state)
        invited += s in INVITED_STATES
        answered += s in ANSWERED_STATES
        if s in ANSWERED_STATES and score is not None:
            band_counts[bands.band_of(int(score))] += 1
        closes = _epoch(closes_at)
        if state in _BEFORE_SEND or (
            s in OPEN_STATES and (closes is None or closes > now.timestamp())
        ):
            disp["pending"] += 1
        elif s in OPEN_STATES:
            disp["NC"] += 1
        elif s in DISPOSITION_OF:
            disp[DISPOSITION_OF[s].value] += 1
        else:
            disp[f"unmapped {state}"] += 1
    counts["n_surveys"] = len(rows)
    counts["n_invited"] = invited
    counts["n_answered"] = answered
    counts["counts.promoters"] = band_counts["promoter"]
    counts["counts.passives"] = band_counts["passive"]
    counts["counts.detractors"] = band_counts["detractor"]
    for key, n in disp.items():
        counts[f"dispositions.{key}"] = n
    return counts


def _flatten(report: Mapping[str, Any]) -> dict[str, Any]:
    flat = {k: report[k] for k in ("n_purchases", "n_surveys", "n_invited", "n_answered")}
    for band in ("promoters", "passives", "detractors"):
        flat[f"counts.{band}"] = report["counts"][band]
    for key, n in report["dispositions"].items():
        flat[f"dispositions.{key}"] = n
    coverage = report["coverage"]
    flat["coverage.purchases"] = coverage["purchases"]
    flat["coverage.eligible"] = coverage["eligible"]
    for reason, n in coverage["steps"][0]["reasons"].items():
        flat[f"skipped.{reason}"] = n
    return flat


def _compare_report(
    factory: sessionmaker[Session], config: OperatorConfig, now: datetime
) -> dict[str, tuple[Any, Any]]:
    report = build_report(factory, config, compare=False, now=now)
    with factory() as session:
        counted = _sql_counts(session, config, now)
        skipped = dict(
            session.execute(
                select(SkippedPurchase.reason, func.count())
                .join(Order, Order.id == SkippedPurchase.order_id)
                .where(Order.purchased_at.is_not(None))
                .group_by(SkippedPurchase.reason)
            ).all()
        )
    counted["coverage.purchases"] = counted["n_purchases"]
    counted["coverage.eligible"] = counted["n_surveys"]
    for reason, n in skipped.items():
        counted[f"skipped.{reason}"] = int(n)
    not_planned = counted["n_purchases"] - counted["n_surveys"] - sum(skipped.values())
    if not_planned > 0:
        counted["skipped.not_planned"] = not_planned
    reported = _flatten(report)
    keys: Iterable[str] = sorted(set(reported) | set(counted))
    return {
        k: (reported.get(k, 0), counted.get(k, 0))
        for k in keys
        if reported.get(k, 0) != counted.get(k, 0)
    }
