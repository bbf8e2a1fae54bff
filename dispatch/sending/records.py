"""Steps 4 and 5 of a send: record what the provider's answer proves. Accepted: ``sending ->
sent`` and one invitation message row (nothing personal for a customer erased meanwhile).
Nothing created: a transient error goes back to ``scheduled`` with its retry time, a permanent
one falls back to the next channel or ends ``failed``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, exists, insert, literal, null, select, update
from sqlalchemy.orm import Session, sessionmaker

from channels.base import OutboundMessage, PermanentSendError, SendReceipt, TransientSendError
from channels.console.send import PROVIDER as CONSOLE
from config import OperatorConfig
from dispatch.consent import customer_erased, erased_customer
from dispatch.sending.claims import fallback_or_end
from dispatch.sending.common import (
    MAX_SEND_ATTEMPTS,
    SURVEYS,
    TRANSITIONS,
    SendInvariantError,
    SendOutcome,
    backoff,
    log,
    masked,
    move_one,
    state_in,
)
from models import Customer, MessageRecord, Survey, SurveyState, move, utcnow
from models.customers import record_consent
from models.lifecycle import can_move
from models.session import engine_of, single_statement

S = SurveyState

_MESSAGES = cast(Table, MessageRecord.__table__)
_CUSTOMERS = cast(Table, Customer.__table__)
_INVITATION_COLUMNS = (
    "survey_id",
    "kind",
    "channel",
    "provider",
    "provider_message_id",
    "status",
    "segments",
    "body",
    "created_at",
)
_FIXED = {"kind": "invitation", "status": "accepted"}
#: The invitation's message row, inserted only when the survey has none yet.
_INVITATION = insert(_MESSAGES).from_select(
    list(_INVITATION_COLUMNS),
    select(
        *[
            (
                literal(_FIXED[name], _MESSAGES.c[name].type)
                if name in _FIXED
                else bindparam(f"b_{name}", type_=_MESSAGES.c[name].type)
            )
            for name in _INVITATION_COLUMNS
        ]
    ).where(
        ~exists().where(
            _MESSAGES.c.survey_id == bindparam("b_survey_id"), _MESSAGES.c.kind == "invitation"
        )
    ),
)


def _sent_in_one() -> Any:
    """PostgreSQL: the erasure check, ``sending -> sent`` with its transition row and the
    invitation's message row, in one statement (a data-modifying WITH) that commits on its own.

    The customer's row is share-locked first (the erasure takes it ``FOR UPDATE`` before it
    empties the survey's and messages' personal columns), then the survey's row by the update
    that joins it: the order :func:`dispatch.consent.customer_erased` and the erasure take
    them. For an erased (or missing) customer the rows keep no provider id, no body and no
    reminder. The rows are written only when the survey moved from ``sending``: then no one
    has recorded its invitation yet (any other writer moves it from there, or finds it in
    another state). Returns the survey's id and whether its customer is erased."""
    # The lifecycle decides whether a send may be recorded at all, as it does for move().
    recordable = [S.sending.value] if can_move(S.sending, S.sent) else []
    locked = (
        select(_CUSTOMERS.c.erased_at)
        .where(_CUSTOMERS.c.id == bindparam("b_customer_id"))
        .with_for_update(read=True)
        .cte("locked")
    )
    # Evaluated once, before the survey's row is updated (and so locked).
    erased = (
        select(~exists().where(locked.c.erased_at.is_(None)).label("erased"))
        .cte("erasure")
        .select()
        .scalar_subquery()
    )

    def unless_erased(name: str, column: Any) -> Any:
        return case((erased, null()), else_=bindparam(name, type_=column.type))

    moved = (
        update(SURVEYS)
        .where(SURVEYS.c.id == bindparam("b_survey_id"), state_in(SURVEYS.c.state, recordable))
        .values(
            state=S.sent.value,
            state_changed_at=bindparam("now"),
            sent_at=bindparam("v_sent_at"),
            provider=bindparam("v_provider"),
            closes_at=bindparam("v_closes_at"),
            provider_message_id=unless_erased(
                "b_provider_message_id", SURVEYS.c.provider_message_id
            ),
            next_reminder_at=unless_erased("v_next_reminder_at", SURVEYS.c.next_reminder_at),
        )
        .returning(SURVEYS.c.id, erased.label("erased"))
        .cte("moved")
    )
    history = insert(TRANSITIONS).from_select(
        ["survey_id", "from_state", "to_state", "at", "reason"],
        select(
            moved.c.id,
            literal(S.sending.value),
            literal(S.sent.value),
            bindparam("now", type_=TRANSITIONS.c.at.type),
            bindparam("b_reason", type_=TRANSITIONS.c.reason.type),
        ),
    )
    kept = ("provider_message_id", "body")  # emptied for an erased customer
    message = insert(_MESSAGES).from_select(
        list(_INVITATION_COLUMNS),
        select(
            moved.c.id,
            *[
                (
                    literal(_FIXED[name], _MESSAGES.c[name].type)
                    if name in _FIXED
                    else case(
                        (moved.c.erased, null()),
                        else_=bindparam(f"b_{name}", type_=_MESSAGES.c[name].type),
                    )
                    if name in kept
                    else bindparam(f"b_{name}", type_=_MESSAGES.c[name].type)
                )
                for name in _INVITATION_COLUMNS[1:]
            ],
        ),
    )
    return (
        select(moved.c.id, moved.c.erased)
        .add_cte(history.cte("history"))
        .add_cte(message.cte("message"))
    )


_SENT_IN_ONE = _sent_in_one()


def commit_sent(
    factory: sessionmaker[Session],
    survey_id: int,
    *,
    channel: str,
    provider: str,
    provider_message_id: str | None,
    segments: int | None,
    body: str | None,
    sent_at: datetime,
    reason: str,
    config: OperatorConfig,
    now: datetime,
    customer_id: int | None = None,
) -> tuple[bool, bool]:
    """``sending -> sent`` and the invitation's message row. For a customer erased
    meanwhile, the fact and the counts only: no provider id, no body, no reminder.
    Returns (moved, erased). ``customer_id``, when the caller knows it, spares reading it.

    One invitation was accepted, so there is one invitation row per survey, whoever records
    it: the worker's own answer, a lookup that settled the send while that answer was still
    on its way, or two schedulers settling the same send. The customer row is share-locked,
    then the survey row (the order the erasure takes them); the message row is inserted only
    when the survey has none, so the second writer adds none.

    The worker's own answer takes one statement on PostgreSQL, run outside an explicit
    transaction (:func:`_sent_in_one`: the erasure check, the compare-and-set ``sending ->
    sent`` and its transition and message rows), four on SQLite. Only a row found in another
    state (settled by a lookup or overtaken by a callback, or recorded by this very statement
    on a connection lost before its answer came back) is read and locked again, in a
    transaction of its own."""
    reminder = config.survey.reminder
    closes_at = sent_at + config.survey.response_window
    next_reminder_at = sent_at + reminder.after if reminder.max > 0 else None
    created_at = utcnow()
    engine = engine_of(factory)
    if customer_id is not None and engine.dialect.name == "postgresql":
        with single_statement(engine) as connection:
            row = connection.execute(
                _SENT_IN_ONE,
                {
                    "b_customer_id": customer_id,
                    "b_survey_id": survey_id,
                    "b_channel": channel,
                    "b_provider": provider,
                    "b_provider_message_id": provider_message_id,
                    "b_segments": segments,
                    "b_body": body,
                    "b_created_at": created_at,
                    "b_reason": reason,
                    "now": now,
                    "v_sent_at": sent_at,
                    "v_provider": provider,
                    "v_closes_at": closes_at,
                    "v_next_reminder_at": next_reminder_at,
                },
            ).first()
        if row is not None:
            return True, bool(row.erased)
    with factory() as session, session.begin():
        erased = (
            erased_customer(session, survey_id)
            if customer_id is None
            else customer_erased(session, customer_id)
        )
        kept_id = None if erased else provider_message_id
        values = {
            "sent_at": sent_at,
            "provider": provider,
            "provider_message_id": kept_id,
            "closes_at": closes_at,
            "next_reminder_at": None if erased else next_reminder_at,
        }
        message = {
            "b_survey_id": survey_id,
            "b_channel": channel,
            "b_provider": provider,
            "b_provider_message_id": kept_id,
            "b_segments": segments,
            "b_body": None if erased else body,
            "b_created_at": created_at,
        }
        moved = engine.dialect.name != "postgresql" and move_one(
            session, survey_id, S.sending, S.sent, now=now, reason=reason, **values
        )
        if not moved:
            session.execute(select(Survey.id).where(Survey.id == survey_id).with_for_update())
            moved = bool(
                move(
                    session,
                    survey_id,
                    S.sent,
                    reason=reason,
                    # send_unknown: the settle window ran out while this worker still waited
                    # for the provider's answer; the answer proves the message went out.
                    only_from=[S.sending, S.send_unknown],
                    now=now,
                    **values,
                )
            )
        session.execute(_INVITATION, message)
    return moved, erased


def record_sent(
    factory: sessionmaker[Session],
    survey: Survey,
    message: OutboundMessage,
    receipt: SendReceipt,
    config: OperatorConfig,
    now: datetime,
) -> SendOutcome:
    moved, erased = commit_sent(
        factory,
        survey.id,
        channel=message.channel.value,
        provider=receipt.provider,
        provider_message_id=receipt.provider_message_id,
        segments=receipt.segments,
        # Only the console keeps what it "sent" (there is no provider copy to look at).
        body=message.body_text if receipt.provider == CONSOLE else None,
        sent_at=now,
        reason=f"accepted by {receipt.provider}",
        config=config,
        now=now,
        customer_id=survey.customer_id,
    )
    if erased:
        log.info("survey %s: sent while the customer was erased; nothing personal kept", survey.id)
    if not moved:
        # A callback for this message already moved the row on (sent/delivered): fine.
        log.info("survey %s: sent; state was already advanced by a callback", survey.id)
    log.info(
        "survey %s sent by %s to %s",
        survey.id,
        receipt.provider,
        # Not even masked once the customer is erased.
        "an erased customer" if erased else masked(message.channel, message.to),
    )
    return SendOutcome(S.sent, receipt.provider_message_id or "accepted without an id")


def record_transient(
    factory: sessionmaker[Session], survey: Survey, now: datetime, exc: TransientSendError
) -> SendOutcome:
    """Nothing was created: back to ``scheduled`` with the retry time in the row, or ``failed``
    once the attempts are used up."""
    with factory() as session, session.begin():
        if survey.attempts >= MAX_SEND_ATTEMPTS:
            why = f"gave up after {survey.attempts} attempts: {exc}"
            move_one(session, survey.id, S.sending, S.failed, now=now, reason=why, final_reason=why)
            log.error("ALERT survey %s failed: %s", survey.id, why)
            return SendOutcome(S.failed, why)
        due = now + backoff(survey.attempts, exc.retry_after_seconds)
        move_one(
            session,
            survey.id,
            S.sending,
            S.scheduled,
            now=now,
            reason=f"transient: {exc}",
            due_at=due,
        )
    log.warning(
        "survey %s: transient send error (%s); retry at %s", survey.id, exc, due.isoformat()
    )
    return SendOutcome(S.scheduled, f"retry at {due.isoformat()}")


def record_permanent(
    factory: sessionmaker[Session],
    survey: Survey,
    customer: Customer,
    config: OperatorConfig,
    now: datetime,
    exc: PermanentSendError,
) -> SendOutcome:
    """Nothing was created and trying again cannot help: a provider's opt-out is recorded as a
    consent revocation, then the next channel is tried or the survey ends ``failed``."""
    why = f"{exc.provider} error {exc.code}: {exc}" if exc.code else f"{exc.provider}: {exc}"
    with factory() as session, session.begin():
        fresh = session.get(Customer, customer.id)
        row = session.get(Survey, survey.id)
        if fresh is None or row is None:
            raise SendInvariantError(f"survey {survey.id}: its row or its customer's is missing")
        if exc.revokes_consent:
            # The provider says this recipient opted out: that is evidence.
            record_consent(
                session,
                fresh,
                {survey.channel: False},
                source=exc.provider,
                text_version=None,
                captured_at=now,
                evidence_kind="provider",
                evidence_ref=f"error {exc.code}",
                recorded_at=now,
            )
        outcome = fallback_or_end(session, row, fresh, config, now, why, S.failed)
    log.warning("survey %s: permanent send error: %s", survey.id, why)
    return outcome
