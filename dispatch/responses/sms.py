"""Inbound SMS: STOP / START / HELP, then answers to the sender's open SMS survey.

STOP revokes SMS consent and ends the sender's open SMS invitations ``opted_out`` (also one whose
send is in flight); START re-grants only what a revocation took away; HELP answers with help.
Anything else goes to the sender's most recent open SMS survey: the score, the follow-up
comment, or one polite re-prompt.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from channels.base import ReceivedSms, ReplyKind
from channels.masking import mask_phone
from config import OperatorConfig
from dispatch.consent import customer_erased, subject_of
from dispatch.responses.answers import (
    _set_comment,
    _set_score,
)
from dispatch.responses.common import (
    _SCORED,
    _UNCONFIRMED,
    SMS_REPLY_STATES,
    Applied,
    S,
    SmsReply,
    _clean_text,
    _window_end,
)
from dispatch.stopping import on_consent_revoked
from models import (
    Answer,
    Customer,
    MessageRecord,
    Survey,
    SurveyState,
    move,
)
from models.customers import latest_consent, record_consent
from models.lifecycle import OPEN_STATES

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Inbound SMS
# --------------------------------------------------------------------------------------------


def _open_sms_survey(
    session: Session, customers: Sequence[Customer], config: OperatorConfig, now: datetime
) -> Survey | None:
    """The most recent SMS survey of these customers that takes replies now."""
    if not customers:
        return None
    states = [s.value for s in SMS_REPLY_STATES | _UNCONFIRMED]
    rows = session.scalars(
        select(Survey)
        .where(
            Survey.customer_id.in_([c.id for c in customers]),
            Survey.channel == "sms",
            Survey.state.in_(states),
        )
        .order_by(Survey.id)  # one lock order for every transaction: no deadlock
        .with_for_update()
    ).all()
    candidates = [s for s in rows if _window_end(s, config) > now]
    return max(
        candidates,
        key=lambda s: (s.sent_at or s.sending_at or s.state_changed_at, s.id),
        default=None,
    )


def _record_reply(
    session: Session, sms: ReceivedSms, survey_id: int, kind: str, live: bool
) -> None:
    """The SMS we answer with (in the webhook's answer): kept like every message, and counted
    for re-prompts."""
    session.add(
        MessageRecord(
            survey_id=survey_id,
            kind=kind,
            channel="sms",
            provider=sms.provider,
            status="twiml" if live else "not_sent",
        )
    )


def apply_inbound_sms(
    session: Session, sms: ReceivedSms, config: OperatorConfig, now: datetime, *, live: bool = True
) -> Applied:
    """A customer's SMS: STOP / START / HELP, else an answer to their open SMS survey."""
    reply = sms.reply
    customers = list(
        session.scalars(
            select(Customer).where(Customer.phone == sms.from_number).order_by(Customer.id)
        )
    )
    subject = subject_of(customers[0]) if customers else None
    if reply.kind is ReplyKind.opt_out:
        applied = _sms_opt_out(session, sms, customers, config, now)
    elif reply.kind is ReplyKind.opt_in:
        applied = _sms_opt_in(session, sms, customers, now)
    else:
        survey = _open_sms_survey(session, customers, config, now)
        owner = next((c for c in customers if survey and c.id == survey.customer_id), None)
        speaker = owner or (customers[0] if customers else None)
        locale = speaker.locale if speaker is not None else None
        subject = subject_of(speaker)
        if reply.kind is ReplyKind.help:
            applied = Applied(
                "help", survey.id if survey else None, subject, SmsReply("help", locale)
            )
        elif survey is None:
            applied = Applied("no open survey", None, subject)
        else:
            answer = _sms_answer(session, survey, sms, config, now, live, locale)
            applied = Applied(answer.result, answer.survey_id, subject, answer.reply)
    log.info("inbound SMS from %s: %s", mask_phone(sms.from_number), applied.result)
    return applied


def _record_sms_consent(
    session: Session, customer: Customer, sms: ReceivedSms, granted: bool, now: datetime
) -> None:
    """The customer's SMS consent as their reply left it, with that reply as the evidence."""
    record_consent(
        session,
        customer,
        {"sms": granted},
        source=f"{sms.provider}:sms-reply",
        text_version=None,
        captured_at=now,
        evidence_kind="sms_reply",
        evidence_ref=sms.message_id,
        recorded_at=now,
    )


def _sms_opt_out(
    session: Session,
    sms: ReceivedSms,
    customers: Sequence[Customer],
    config: OperatorConfig,
    now: datetime,
) -> Applied:
    ended: list[int] = []
    for customer in customers:
        _record_sms_consent(session, customer, sms, False, now)
        open_ids = list(
            session.scalars(
                select(Survey.id).where(
                    Survey.customer_id == customer.id,
                    Survey.channel == "sms",
                    Survey.state.in_([s.value for s in OPEN_STATES]),
                )
            )
        )
        ended += move(
            session,
            open_ids,
            S.opted_out,
            reason="STOP reply",
            only_from=OPEN_STATES,
            now=now,
            final_reason="sms opt-out (STOP reply)",
        )
        ended += _opt_out_in_flight(session, customer, now)
        on_consent_revoked(session, customer, "sms", config, now)
    if not customers:
        return Applied("opt-out: unknown number")
    return Applied("opted out", ended[0] if ended else None, subject_of(customers[0]))


def _opt_out_in_flight(session: Session, customer: Customer, now: datetime) -> list[int]:
    """SMS invitations whose provider call was made but whose outcome is not recorded yet
    (``sending`` with its marker ``sending_at``, or ``send_unknown``) end ``opted_out``: the
    STOP answers that message. When the sender's answer comes later it finds the row no longer
    ``sending`` and moves nothing (no ``sent``, no reminder).

    A row in ``sending`` without the marker has not reached the provider: it is left to the
    sender, which re-checks consent after its rate-limit wait and, finding it revoked, falls
    back to another consented channel or ends it ``suppressed`` (consent revoked before
    sending), not ``opted_out`` (no invitation went out) nor ``withdrawn`` (which is for a
    cancelled order or an erased customer). The rows are locked before the marker is read, and
    the sender locks the row before its re-check, so one of the two sees the other's commit."""
    rows = session.execute(
        select(Survey.id, Survey.state, Survey.sending_at)
        .where(
            Survey.customer_id == customer.id,
            Survey.channel == "sms",
            Survey.state.in_([S.sending.value, S.send_unknown.value]),
        )
        .order_by(Survey.id)
        .with_for_update()
    ).all()
    ids = [r.id for r in rows if r.state == S.send_unknown or r.sending_at is not None]
    return move(
        session,
        ids,
        S.opted_out,
        reason="STOP reply while the invitation was being sent",
        only_from=[S.sending, S.send_unknown],
        now=now,
        final_reason="sms opt-out (STOP reply)",
    )


def _sms_opt_in(
    session: Session, sms: ReceivedSms, customers: Sequence[Customer], now: datetime
) -> Applied:
    """START re-grants SMS consent, but only where STOP (or another revocation) took it away:
    a "YES" from someone who never consented to SMS is not consent."""
    regranted = 0
    for customer in customers:
        if latest_consent(session, customer.id, "sms") is False:
            _record_sms_consent(session, customer, sms, True, now)
            regranted += 1
    subject = subject_of(customers[0]) if customers else None
    return Applied("opted in" if regranted else "opt-in: nothing to re-grant", None, subject)


def _sms_answer(
    session: Session,
    survey: Survey,
    sms: ReceivedSms,
    config: OperatorConfig,
    now: datetime,
    live: bool,
    locale: str | None,
) -> Applied:
    body, reply = sms.body, sms.reply
    bands = config.survey.bands
    state = SurveyState(survey.state)
    if state in _SCORED:
        # Waiting for the follow-up. A bare number is a changed mind; anything else answers the
        # follow-up question (a score-looking "2 items were missing" is a comment here).
        if reply.kind is ReplyKind.score and reply.comment is None and reply.score is not None:
            outcome = _set_score(session, survey, reply.score, "sms", config, now)
            _record_reply(session, sms, survey.id, "followup", live)
            result = "changed score" if outcome == "recorded" else "same score"
            band = bands.band_of(reply.score)
            return Applied(result, survey.id, reply=SmsReply("followup", locale, band))
        comment = _clean_text(body)
        if comment is None or not any(ch.isalnum() for ch in comment):
            return Applied("empty reply ignored", survey.id)
        _set_comment(session, survey, comment, "sms", now)
        _record_reply(session, sms, survey.id, "thanks", live)
        return Applied("comment", survey.id, reply=SmsReply("thanks", locale))
    if reply.kind is ReplyKind.score and reply.score is not None:
        comment = _clean_text(reply.comment) if reply.comment else None
        outcome = _set_score(session, survey, reply.score, "sms", config, now, comment=comment)
        if outcome == "closed":
            return Applied("survey closed", survey.id)
        if comment is not None:
            _record_reply(session, sms, survey.id, "thanks", live)
            return Applied("score and comment", survey.id, reply=SmsReply("thanks", locale))
        _record_reply(session, sms, survey.id, "followup", live)
        band = bands.band_of(reply.score)
        return Applied("score", survey.id, reply=SmsReply("followup", locale, band))
    # No score could be read: one polite re-prompt, then keep what they write as a comment.
    prompts = session.scalar(
        select(func.count())
        .select_from(MessageRecord)
        .where(MessageRecord.survey_id == survey.id, MessageRecord.kind == "reprompt")
    )
    if not prompts:
        _record_reply(session, sms, survey.id, "reprompt", live)
        return Applied("re-prompted", survey.id, reply=SmsReply("reprompt", locale))
    comment = _clean_text(reply.comment) if reply.comment else None
    if comment is None:
        return Applied("unreadable, empty: ignored", survey.id)
    if customer_erased(session, survey.customer_id):
        return Applied("customer erased: not kept", survey.id)
    session.add(
        Answer(survey_id=survey.id, score=None, comment=comment, via="sms", received_at=now)
    )
    session.execute(update(Survey).where(Survey.id == survey.id).values(comment=comment))
    return Applied("unreadable: stored as comment", survey.id)
