"""Stopping unsent surveys: the order was cancelled or refunded, or the consent for the
survey's channel was revoked (then the survey moves to another consented channel when the
config allows a fallback, else it is suppressed). Called by ingest, the provider webhooks and
the scheduler's re-check at claim time."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from config import OperatorConfig
from dispatch.planning import ChannelChoice, choose_channel
from models import Customer, Order, SkipReason, Survey, SurveyState, current_consent, move
from models.lifecycle import UNSENT_STATES

__all__ = ["on_consent_revoked", "withdraw_order"]

S = SurveyState


def withdraw_order(session: Session, order: Order, reason: str, now: datetime) -> str:
    survey = session.scalar(select(Survey).where(Survey.order_id == order.id))
    if survey is None:
        return "no survey yet" if order.purchased_at is None else "no survey"
    moved = move(
        session,
        survey.id,
        S.withdrawn,
        reason=reason,
        only_from=UNSENT_STATES,
        now=now,
        final_reason=reason,
    )
    return "survey withdrawn" if moved else f"survey already {survey.state}"


def on_consent_revoked(
    session: Session,
    customer: Customer,
    channel: str,
    config: OperatorConfig,
    now: datetime,
    *,
    only: Collection[int] | None = None,
) -> str:
    """Stop every unsent survey on ``channel``, or move it to another consented channel.

    ``only`` limits it to those surveys: a scheduler holding some of the customer's surveys
    locked must not wait on the others, which another scheduler may hold while it waits on
    these (a deadlock); the others are re-checked when they are claimed in turn."""
    if current_consent(session, customer.id, channel):
        return "an earlier revocation: the later grant stands"
    conditions = [
        Survey.customer_id == customer.id,
        Survey.channel == channel,
        Survey.state.in_([s.value for s in UNSENT_STATES]),
    ]
    if only is not None:
        conditions.append(Survey.id.in_(list(only)))
    surveys = list(session.scalars(select(Survey).where(*conditions)))
    outcomes = []
    for survey in surveys:
        alternative = (
            choose_channel(session, customer, config, exclude=(channel,))
            if config.contact.fallback
            else ChannelChoice(None, SkipReason.no_consent)
        )
        if alternative.channel is not None:
            tried = f"{survey.tried_channels},{alternative.channel}"
            # Back to scheduled on the other channel, keeping its due time.
            move(
                session,
                survey.id,
                S.waiting_anchor if survey.state == S.waiting_anchor else S.scheduled,
                reason=f"{channel} consent revoked; moved to {alternative.channel}",
                only_from=UNSENT_STATES,
                now=now,
                channel=alternative.channel,
                tried_channels=tried,
            )
            outcomes.append(f"survey moved to {alternative.channel}")
        else:
            move(
                session,
                survey.id,
                S.suppressed,
                reason=f"{channel} consent revoked",
                only_from=UNSENT_STATES,
                now=now,
                final_reason=f"{channel} consent revoked",
            )
            outcomes.append("survey suppressed")
    return "; ".join(outcomes)
