"""What an accepted event did, read back from the rows it left behind.

The per-item answer of ``POST /v1/events`` says what happened to each event: a purchase got a
survey (its state, channel and due time) or was skipped (the recorded reason); a cancellation
withdrew a survey; a revocation suppressed or moved surveys. It is read from the database inside
the event's own savepoint, right after the event was applied: :func:`before` notes the surveys
the event may touch, :func:`after` compares, so the answer is what planning actually recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from ingest.schema import ConsentEvent, CustomerErased, OrderEvent, PurchaseCompleted
from models import Customer, Order, SkippedPurchase, Survey, SurveyState, current_consent
from models.lifecycle import UNSENT_STATES

__all__ = [
    "ConsentRecorded",
    "Erased",
    "Ignored",
    "Outcome",
    "Planned",
    "Recorded",
    "Skipped",
    "Withdrawn",
    "after",
    "before",
]

_UNSENT = [s.value for s in UNSENT_STATES]


class _Outcome(BaseModel):
    # Every field is always written out, so the schema marks them all required in answers.
    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)


class Planned(_Outcome):
    """The purchase got a survey."""

    result: Literal["planned"] = "planned"
    survey_state: str = Field(
        description="waiting_anchor (waiting for its fulfilment or delivery) or scheduled"
    )
    channel: str = Field(description="email or sms")
    due_at: datetime | None = Field(
        description="when it is due; while waiting_anchor, when it is planned from the purchase "
        "if no anchor event has come by then"
    )


class Skipped(_Outcome):
    """The purchase got no survey, for the recorded reason."""

    result: Literal["skipped"] = "skipped"
    reason: str = Field(
        description="no_consent, invalid_contact, no_contact, no_channel, frequency_cap, "
        "sampled_out, excluded_test_order, excluded_min_total, cancelled or erased"
    )
    detail: str | None = None


class Ignored(_Outcome):
    """Taken (and recorded in the ledger) but with no effect."""

    result: Literal["ignored"] = "ignored"
    reason: str = Field(
        description="order_already_recorded (another purchase event for the same order) or "
        "customer_erased (an event dated before the customer's erasure)"
    )


class Recorded(_Outcome):
    """An order event was recorded; the order's survey as it stands after it."""

    result: Literal["recorded"] = "recorded"
    purchase_recorded: bool = Field(
        description="false while the purchase event of the order has not arrived yet"
    )
    survey_state: str | None = None
    due_at: datetime | None = None


class Withdrawn(_Outcome):
    """A cancellation or refund withdrew the order's unsent survey."""

    result: Literal["withdrawn"] = "withdrawn"
    surveys: int


class ConsentRecorded(_Outcome):
    """A consent event was recorded as evidence."""

    result: Literal["granted", "revoked"]
    consent: dict[str, bool] = Field(
        description="each channel named by the event with its consent now; it differs from the "
        "event when evidence captured later stands"
    )
    surveys_suppressed: int = 0
    surveys_moved: int = Field(0, description="unsent surveys moved to another consented channel")


class Erased(_Outcome):
    """The customer's personal data was erased."""

    result: Literal["erased"] = "erased"
    surveys_withdrawn: int = 0


Outcome = Annotated[
    Planned | Skipped | Ignored | Recorded | Withdrawn | ConsentRecorded | Erased,
    Field(discriminator="result"),
]
AnyEvent = PurchaseCompleted | OrderEvent | ConsentEvent | CustomerErased


@dataclass(frozen=True, slots=True)
class Before:
    """What the event may change, as it was before it was applied."""

    purchase_recorded: bool = False
    surveys: dict[int, tuple[str, str]] = field(default_factory=dict)  # id: (state, channel)


def _order_surveys(session: Session, order_id: str) -> dict[int, tuple[str, str]]:
    rows = session.execute(
        select(Survey.id, Survey.state, Survey.channel)
        .join(Order, Order.id == Survey.order_id)
        .where(Order.external_id == order_id)
    )
    return {row.id: (row.state, row.channel) for row in rows}


def _unsent_surveys(session: Session, customer_id: str) -> dict[int, tuple[str, str]]:
    rows = session.execute(
        select(Survey.id, Survey.state, Survey.channel)
        .join(Customer, Customer.id == Survey.customer_id)
        .where(Customer.external_id == customer_id, Survey.state.in_(_UNSENT))
    )
    return {row.id: (row.state, row.channel) for row in rows}


def before(session: Session, event: AnyEvent) -> Before:
    if isinstance(event, PurchaseCompleted):
        purchased = session.scalar(
            select(Order.purchased_at).where(Order.external_id == event.order_id)
        )
        return Before(purchase_recorded=purchased is not None)
    if isinstance(event, OrderEvent):
        return Before(surveys=_order_surveys(session, event.order_id))
    return Before(surveys=_unsent_surveys(session, event.customer.id))


def _now_of(session: Session, ids: list[int]) -> dict[int, tuple[str, str]]:
    if not ids:
        return {}
    rows = session.execute(
        select(Survey.id, Survey.state, Survey.channel).where(Survey.id.in_(ids))
    )
    return {row.id: (row.state, row.channel) for row in rows}


def _moved_to(
    was: dict[int, tuple[str, str]], now: dict[int, tuple[str, str]], state: SurveyState
) -> int:
    return sum(
        1 for sid, (old, _) in was.items() if old != state and sid in now and now[sid][0] == state
    )


def _purchase(session: Session, event: PurchaseCompleted, was: Before) -> Outcome:
    if was.purchase_recorded:
        return Ignored(reason="order_already_recorded")
    row = session.execute(
        select(
            Survey.state,
            Survey.channel,
            Survey.due_at,
            SkippedPurchase.reason,
            SkippedPurchase.detail,
        )
        .select_from(Order)
        .outerjoin(Survey, Survey.order_id == Order.id)
        .outerjoin(SkippedPurchase, SkippedPurchase.order_id == Order.id)
        .where(Order.external_id == event.order_id)
    ).one()
    if row.state is not None:
        return Planned(survey_state=row.state, channel=row.channel, due_at=row.due_at)
    if row.reason is not None:
        return Skipped(reason=row.reason, detail=row.detail)
    # Planning records a survey or a skip for every purchase; say so if it ever did not.
    return Recorded(purchase_recorded=True)


def _order(session: Session, event: OrderEvent, was: Before) -> Outcome:
    now = _now_of(session, list(was.surveys))
    withdrawn = _moved_to(was.surveys, now, SurveyState.withdrawn)
    if withdrawn:
        return Withdrawn(surveys=withdrawn)
    row = session.execute(
        select(Order.purchased_at, Survey.state, Survey.due_at)
        .select_from(Order)
        .outerjoin(Survey, Survey.order_id == Order.id)
        .where(Order.external_id == event.order_id)
    ).one()
    return Recorded(
        purchase_recorded=row.purchased_at is not None, survey_state=row.state, due_at=row.due_at
    )


def _consent(session: Session, event: ConsentEvent, was: Before) -> Outcome:
    customer_id = session.scalar(
        select(Customer.id).where(Customer.external_id == event.customer.id)
    )
    if customer_id is None:
        # Only an erased customer has no row once a consent event is applied.
        return Ignored(reason="customer_erased")
    now = _now_of(session, list(was.surveys))
    suppressed = _moved_to(was.surveys, now, SurveyState.suppressed)
    moved = sum(
        1
        for sid, (_, channel) in was.surveys.items()
        if sid in now and now[sid][1] != channel and now[sid][0] != SurveyState.suppressed
    )
    return ConsentRecorded(
        result="granted" if event.type == "consent.granted" else "revoked",
        consent={ch: current_consent(session, customer_id, ch) for ch in event.consent.channels()},
        surveys_suppressed=suppressed,
        surveys_moved=moved,
    )


def after(session: Session, event: AnyEvent, was: Before) -> Outcome:
    """What ``event`` did, compared with ``was`` (taken by :func:`before`)."""
    if isinstance(event, PurchaseCompleted):
        return _purchase(session, event, was)
    if isinstance(event, OrderEvent):
        return _order(session, event, was)
    if isinstance(event, ConsentEvent):
        return _consent(session, event, was)
    now = _now_of(session, list(was.surveys))
    return Erased(surveys_withdrawn=_moved_to(was.surveys, now, SurveyState.withdrawn))
