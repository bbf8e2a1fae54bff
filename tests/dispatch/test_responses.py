"""dispatch.responses on real databases: delivery events, inbound SMS, answers, replay."""

from __future__ import annotations

import io
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from channels.base import ChannelName, RawWebhook
from channels.console.send import ConsoleChannel
from channels.links import AnswerLinks
from channels.sendgrid_email.webhooks import raw_sendgrid_events
from channels.twilio_sms.webhooks import raw_twilio_inbound, raw_twilio_status
from dispatch import responses
from dispatch.scheduler import Scheduler
from dispatch.sending import Sender
from models import (
    Answer,
    ConsentRecord,
    Customer,
    InboundEvent,
    MessageRecord,
    Order,
    Survey,
    current_consent,
    utcnow,
)
from tests.conftest import Database

PHONE = "+40721000111"
EMAIL = "ana@example.com"
_seq = itertools.count(1)


# --- seeding (also used by tests/web) -----------------------------------------------------------


def seed_survey(
    db: Database,
    *,
    channel: str = "sms",
    state: str = "sent",
    customer: str = "c-1",
    phone: str | None = PHONE,
    email: str | None = EMAIL,
    locale: str | None = "en",
    consent: dict[str, bool] | None = None,
    now: datetime | None = None,
    **values: Any,
) -> int:
    """A customer (created once per external id), an order and one survey in ``state``.

    Sent-like states get ``sent_at`` and a ``closes_at`` 14 days after ``now`` (real time by
    default, since the web routes check windows against the clock)."""
    now = now or utcnow()
    n = next(_seq)
    with db.session() as s, s.begin():
        person = s.scalar(select(Customer).where(Customer.external_id == customer))
        if person is None:
            person = Customer(
                external_id=customer,
                phone=phone,
                phone_status="valid" if phone else "missing",
                email=email,
                email_status="valid" if email else "missing",
                locale=locale,
                timezone="Europe/Berlin",
                first_name="Ana",
            )
            s.add(person)
            s.flush()
            for ch, granted in (consent or {"sms": True, "email": True}).items():
                s.add(
                    ConsentRecord(
                        customer_id=person.id,
                        channel=ch,
                        granted=granted,
                        source="checkout",
                        captured_at=now - timedelta(days=30),
                        evidence_kind="event",
                        evidence_ref=f"evt-{n}",
                    )
                )
        order = Order(
            external_id=f"O-{n}",
            customer_id=person.id,
            purchased_at=now - timedelta(days=10),
            total_amount=50,
            currency="EUR",
            category="books",
        )
        s.add(order)
        s.flush()
        fields: dict[str, Any] = {
            "order_id": order.id,
            "customer_id": person.id,
            "channel": channel,
            "state": state,
            "state_changed_at": now - timedelta(days=1),
            "planned_at": now - timedelta(days=3),
            "timezone": "Europe/Berlin",
            "tried_channels": channel,
            "due_at": now - timedelta(days=1),
        }
        if state in ("sent", "delivered", "answered", "completed", "undeliverable"):
            fields.update(
                sent_at=now - timedelta(days=1),
                sending_at=now - timedelta(days=1),
                closes_at=now + timedelta(days=13),
                provider="twilio" if channel == "sms" else "sendgrid",
                provider_message_id=f"SM{n:032d}" if channel == "sms" else f"sgmsg{n}",
            )
        if state == "sending":
            fields.update(sending_at=now - timedelta(minutes=1))
        fields.update(values)
        survey = Survey(**fields)
        s.add(survey)
        s.flush()
        if survey.provider_message_id:
            s.add(
                MessageRecord(
                    survey_id=survey.id,
                    kind="invitation",
                    channel=channel,
                    provider=survey.provider or "console",
                    provider_message_id=survey.provider_message_id,
                    status="accepted",
                )
            )
        return survey.id


def survey_of(db: Database, survey_id: int) -> Survey:
    with db.session() as s:
        survey = s.get(Survey, survey_id)
        assert survey is not None
        return survey


def answers_of(db: Database, survey_id: int) -> list[tuple[Any, ...]]:
    with db.session() as s:
        rows = s.execute(
            select(Answer.score, Answer.comment, Answer.via)
            .where(Answer.survey_id == survey_id)
            .order_by(Answer.id)
        )
        return [tuple(r) for r in rows]


def count(db: Database, model: Any) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(model)) or 0


# --- helpers ------------------------------------------------------------------------------------


def twilio_status(survey_id: int | None, sid: str, status: str, error: str = "") -> RawWebhook:
    form = {"MessageSid": sid, "MessageStatus": status, "To": PHONE, "From": "+15005550006"}
    if error:
        form["ErrorCode"] = error
    query = f"survey_id={survey_id}" if survey_id else ""
    return raw_twilio_status(form, query)


def sendgrid_event(
    survey_id: int | None, event: str, event_id: str, message_id: str | None = None, **extra: Any
) -> RawWebhook:
    """A SendGrid event; without ``message_id`` it carries none (like an asynchronous bounce)."""
    import json

    payload = {
        "email": EMAIL,
        "event": event,
        "sg_event_id": event_id,
        **({"sg_message_id": f"{message_id}.filterdrecv-1"} if message_id else {}),
        "timestamp": int(utcnow().timestamp()),
        **({"survey_id": str(survey_id)} if survey_id else {}),
        **extra,
    }
    [raw] = raw_sendgrid_events(json.dumps([payload]).encode())
    return raw


def inbound(body: str, sid: str | None = None, sender: str = PHONE) -> RawWebhook:
    return raw_twilio_inbound(
        {
            "MessageSid": sid or f"SMin{next(_seq):030d}",
            "From": sender,
            "To": "+15005550006",
            "Body": body,
        }
    )


def run(db: Database, config, *raws: RawWebhook) -> list[responses.Handled]:
    return responses.ingest_webhooks(db.factory, config, list(raws))


def sms(db: Database, config, body: str) -> responses.Handled:
    [handled] = run(db, config, inbound(body))
    return handled


# --- Twilio status callbacks --------------------------------------------------------------------


def test_status_callbacks_move_forward_and_duplicates_are_harmless(db: Database, config):
    sid = seed_survey(db, state="sent")
    pmid = survey_of(db, sid).provider_message_id
    [first] = run(db, config, twilio_status(sid, pmid, "delivered"))
    assert first.status == "applied" and first.result == "delivered"
    [again] = run(db, config, twilio_status(sid, pmid, "delivered"))
    assert again.status == "duplicate"
    late = run(db, config, twilio_status(sid, pmid, "sent"), twilio_status(sid, pmid, "queued"))
    assert [h.result for h in late] == ["no change: survey delivered"] * 2
    survey = survey_of(db, sid)
    assert survey.state == "delivered" and survey.delivered_at is not None
    assert count(db, InboundEvent) == 3


@pytest.mark.parametrize(
    "order", list(itertools.permutations(["sent", "undelivered", "delivered"]))
)
def test_status_order_does_not_matter(db: Database, config, order):
    sid = seed_survey(db, state="sent")
    pmid = survey_of(db, sid).provider_message_id
    run(db, config, *[twilio_status(sid, pmid, status, "30003") for status in order])
    # A delivery receipt outranks a failure report, whatever arrived first.
    assert survey_of(db, sid).state == "delivered"
    assert survey_of(db, sid).final_reason is None


def test_permanent_failure_ends_undeliverable_with_the_code(db: Database, config):
    sid = seed_survey(db, state="sent")
    pmid = survey_of(db, sid).provider_message_id
    run(
        db,
        config,
        twilio_status(sid, pmid, "sent"),
        twilio_status(sid, pmid, "undelivered", "30005"),
    )
    survey = survey_of(db, sid)
    assert survey.state == "undeliverable"
    assert "30005" in survey.final_reason and "transient" not in survey.final_reason
    with db.session() as s:
        record = s.scalar(select(MessageRecord).where(MessageRecord.survey_id == sid))
        assert record.status == "undeliverable" and record.error == "error 30005"


@pytest.mark.parametrize("state", ["sending", "send_unknown"])
def test_callback_moves_an_unconfirmed_send_forward(db: Database, config, state):
    sid = seed_survey(db, state=state)
    [handled] = run(db, config, twilio_status(sid, "SMlate0001", "delivered"))
    assert handled.result == "delivered"
    survey = survey_of(db, sid)
    assert survey.state == "delivered"
    assert survey.provider_message_id == "SMlate0001" and survey.provider == "twilio"
    assert survey.sent_at is not None and survey.closes_at is not None


def test_callback_overtaking_the_commit_then_sent_commit(db: Database, config):
    """`sending`: the callback says `sent` first; our own commit finds it moved and is fine."""
    sid = seed_survey(db, state="sending")
    run(db, config, twilio_status(sid, "SMrace0001", "sent"))
    assert survey_of(db, sid).state == "sent"
    assert survey_of(db, sid).provider_message_id == "SMrace0001"


def test_reminder_callbacks_do_not_move_the_survey(db: Database, config):
    sid = seed_survey(db, state="delivered")
    with db.session() as s, s.begin():
        s.add(
            MessageRecord(
                survey_id=sid,
                kind="reminder",
                channel="sms",
                provider="twilio",
                provider_message_id="SMreminder1",
                status="accepted",
            )
        )
    [handled] = run(db, config, twilio_status(sid, "SMreminder1", "undelivered", "30005"))
    assert handled.result == "another message of the survey"
    assert survey_of(db, sid).state == "delivered"


def test_sms_callback_for_a_survey_now_on_email_is_ignored(db: Database, config):
    sid = seed_survey(db, channel="email", state="sent")
    [handled] = run(db, config, twilio_status(sid, "SMold", "failed", "30005"))
    assert handled.result == "another message of the survey"
    assert survey_of(db, sid).state == "sent"


def test_callback_for_an_unknown_survey_is_kept(db: Database, config):
    [handled] = run(db, config, twilio_status(None, "SMnobody", "delivered"))
    assert handled.result == "no matching survey"
    with db.session() as s:
        row = s.scalar(select(InboundEvent))
        assert row.survey_id is None and row.handled_at is not None


def test_callback_with_a_survey_id_that_does_not_exist(db: Database, config):
    [handled] = run(db, config, twilio_status(999999, "SMghost", "delivered"))
    assert handled.status == "applied" and handled.result == "no matching survey"


# --- SendGrid events ----------------------------------------------------------------------------


@pytest.mark.parametrize("first_delivered", [True, False])
def test_email_bounce_and_delivered_in_any_order(db: Database, config, first_delivered):
    sid = seed_survey(db, channel="email", state="sent")
    pmid = survey_of(db, sid).provider_message_id
    events = [
        sendgrid_event(sid, "delivered", "e-del", pmid),
        sendgrid_event(sid, "bounce", "e-bounce", type="bounce", status="5.1.1"),
    ]
    run(db, config, *(events if first_delivered else events[::-1]))
    survey = survey_of(db, sid)
    assert survey.state == "undeliverable" and "5.1.1" in survey.final_reason


def test_dropped_is_undeliverable(db: Database, config):
    sid = seed_survey(db, channel="email", state="sent")
    run(db, config, sendgrid_event(sid, "dropped", "e-drop", reason="Bounced Address"))
    assert survey_of(db, sid).state == "undeliverable"
    assert survey_of(db, sid).final_reason == "sendgrid dropped"


def test_open_and_click_are_engagement_never_answers(db: Database, config):
    sid = seed_survey(db, channel="email", state="delivered")
    handled = run(
        db,
        config,
        sendgrid_event(sid, "open", "e-open"),
        sendgrid_event(sid, "click", "e-click", url="https://nps.example.test/s/x?score=9"),
    )
    assert [h.result for h in handled] == ["engagement: opened", "engagement: clicked"]
    survey = survey_of(db, sid)
    assert survey.state == "delivered" and survey.score is None
    assert answers_of(db, sid) == []
    with db.session() as s:
        kinds = set(s.scalars(select(InboundEvent.event_type)))
    assert kinds == {"open", "click"}


@pytest.mark.parametrize("event", ["unsubscribe", "group_unsubscribe", "spamreport"])
def test_unsubscribe_and_spam_report_revoke_email_consent(db: Database, config, event):
    sid = seed_survey(db, channel="email", state="delivered")
    pending = seed_survey(db, channel="email", state="scheduled", consent=None)
    [handled] = run(db, config, sendgrid_event(sid, event, f"e-{event}"))
    assert handled.result == "email consent revoked; opted out"
    survey = survey_of(db, sid)
    assert survey.state == "opted_out" and event in survey.final_reason
    with db.session() as s:
        assert not current_consent(s, survey.customer_id, "email")
        record = s.scalar(select(ConsentRecord).where(ConsentRecord.granted.is_(False)))
        assert record.evidence_kind == "webhook" and record.evidence_ref == f"e-{event}"
    # The customer's unsent email survey moves to SMS (consented) instead of going out by email.
    assert survey_of(db, pending).channel == "sms"


def test_unsubscribe_after_an_answer_keeps_the_answer(db: Database, config):
    sid = seed_survey(db, channel="email", state="answered", score=9)
    run(db, config, sendgrid_event(sid, "unsubscribe", "e-u"))
    assert survey_of(db, sid).state == "answered"


def test_group_resubscribe_grants_again(db: Database, config):
    sid = seed_survey(db, channel="email", state="delivered")
    run(db, config, sendgrid_event(sid, "group_unsubscribe", "e-1"))
    run(
        db,
        config,
        sendgrid_event(sid, "group_resubscribe", "e-2", timestamp=int(utcnow().timestamp()) + 5),
    )
    with db.session() as s:
        assert current_consent(s, survey_of(db, sid).customer_id, "email")


# --- store, then process; replay ----------------------------------------------------------------


def test_failure_while_applying_keeps_the_raw_row_for_replay(db: Database, config, monkeypatch):
    sid = seed_survey(db, state="sent")
    pmid = survey_of(db, sid).provider_message_id
    real = responses.apply_delivery_event

    def broken(*args, **kwargs):
        raise RuntimeError(f"database hiccup for {PHONE}")

    monkeypatch.setattr(responses, "apply_delivery_event", broken)
    [handled] = run(db, config, twilio_status(sid, pmid, "delivered"))
    assert handled.status == "failed"
    with db.session() as s:
        row = s.scalar(select(InboundEvent))
        assert row.handled_at is None and row.payload is not None
        assert "RuntimeError" in row.error and PHONE not in row.error  # masked
    assert survey_of(db, sid).state == "sent"

    monkeypatch.setattr(responses, "apply_delivery_event", real)
    # Too young for the replayer: the request that stored it may still be applying it.
    assert responses.replay_unhandled_webhooks(db.factory, config).applied == 0
    report = responses.replay_unhandled_webhooks(
        db.factory, config, now=utcnow() + timedelta(minutes=5)
    )
    assert report.applied == 1 and report.failed == 0
    assert survey_of(db, sid).state == "delivered"
    with db.session() as s:
        row = s.scalar(select(InboundEvent))
        assert row.handled_at is not None and row.error is None and row.result == "delivered"
    # Nothing left; a replay again is a no-op.
    later = responses.replay_unhandled_webhooks(
        db.factory, config, now=utcnow() + timedelta(hours=1)
    )
    assert (later.applied, later.failed) == (0, 0)


def test_a_retried_delivery_of_an_unapplied_event_applies_it(db: Database, config, monkeypatch):
    sid = seed_survey(db, state="sent")
    pmid = survey_of(db, sid).provider_message_id
    real = responses.apply_delivery_event
    monkeypatch.setattr(responses, "apply_delivery_event", lambda *a, **k: 1 / 0)
    assert run(db, config, twilio_status(sid, pmid, "delivered"))[0].status == "failed"
    monkeypatch.setattr(responses, "apply_delivery_event", real)
    assert run(db, config, twilio_status(sid, pmid, "delivered"))[0].status == "applied"
    assert run(db, config, twilio_status(sid, pmid, "delivered"))[0].status == "duplicate"
    assert survey_of(db, sid).state == "delivered"


def test_an_erased_payload_is_handled_without_effect(db: Database, config):
    stored = responses.store_webhooks(db.factory, [inbound("9")])
    with db.session() as s, s.begin():
        s.get(InboundEvent, stored[0].row_id).payload = None
    handled = responses.handle_webhook(db.factory, config, stored[0].row_id)
    assert handled.result == "payload erased"


# --- inbound SMS --------------------------------------------------------------------------------


def test_score_then_followup_then_thanks(db: Database, config):
    sid = seed_survey(db, state="delivered")
    first = sms(db, config, " 10!")
    assert first.result == "score"
    assert first.reply == responses.SmsReply("followup", "en", "promoter")
    assert survey_of(db, sid).state == "answered" and survey_of(db, sid).score == 10
    second = sms(db, config, "Fast delivery, 2 days early")  # numbers in a comment stay words
    assert second.result == "comment" and second.reply.kind == "thanks"
    survey = survey_of(db, sid)
    assert survey.state == "completed" and survey.comment == "Fast delivery, 2 days early"
    assert survey.score == 10
    assert answers_of(db, sid) == [(10, None, "sms"), (None, "Fast delivery, 2 days early", "sms")]
    with db.session() as s:
        kinds = list(s.scalars(select(MessageRecord.kind).where(MessageRecord.survey_id == sid)))
    assert kinds == ["invitation", "followup", "thanks"]


@pytest.mark.parametrize(
    ("body", "score", "band"),
    [("9", 9, "promoter"), ("9/10", 9, "promoter"), ("7", 7, "passive"), ("0", 0, "detractor")],
)
def test_scores_are_read_robustly(db: Database, config, body, score, band):
    sid = seed_survey(db, state="sent")
    handled = sms(db, config, body)
    assert handled.reply.band == band and survey_of(db, sid).score == score


def test_score_with_a_comment_completes_at_once(db: Database, config):
    sid = seed_survey(db, state="sent")
    handled = sms(db, config, "8 - slow delivery")
    assert handled.result == "score and comment" and handled.reply.kind == "thanks"
    survey = survey_of(db, sid)
    assert (survey.state, survey.score, survey.comment) == ("completed", 8, "slow delivery")
    assert answers_of(db, sid) == [(8, "slow delivery", "sms")]


def test_one_reprompt_then_unreadable_replies_are_comments(db: Database, config):
    sid = seed_survey(db, state="delivered")
    first = sms(db, config, "what?")
    assert first.result == "re-prompted" and first.reply.kind == "reprompt"
    second = sms(db, config, "I liked it a lot")
    assert second.result == "unreadable: stored as comment" and second.reply is None
    third = sms(db, config, "really")
    assert third.reply is None
    survey = survey_of(db, sid)
    assert survey.state == "delivered" and survey.score is None and survey.comment == "really"
    assert answers_of(db, sid) == [(None, "I liked it a lot", "sms"), (None, "really", "sms")]
    # A score after all that is still taken.
    assert sms(db, config, "9").result == "score"


def test_a_bare_number_after_the_score_changes_it(db: Database, config):
    sid = seed_survey(db, state="sent")
    sms(db, config, "6")
    handled = sms(db, config, "9")
    assert handled.result == "changed score" and handled.reply.band == "promoter"
    assert survey_of(db, sid).score == 9
    assert [a[0] for a in answers_of(db, sid)] == [6, 9]


def test_no_open_survey_is_stored_never_lost(db: Database, config, pseudonymiser):
    seed_survey(db, state="no_response")
    handled = sms(db, config, "9")
    assert handled.result == "no open survey" and handled.reply is None
    with db.session() as s:
        row = s.scalar(select(InboundEvent))
        assert row.survey_id is None and row.result == "no open survey"
        # Kept under the sender's keyed pseudonym, where their erasure finds it.
        assert row.payload["form"]["Body"] == "9"
        assert row.subject_key == pseudonymiser.subject("c-1") != "c-1"


def test_unknown_number_is_stored(db: Database, config):
    [handled] = run(db, config, inbound("9", sender="+4915100000001"))
    assert handled.result == "no open survey"
    assert count(db, InboundEvent) == 1


def test_window_closed_means_no_open_survey(db: Database, config):
    seed_survey(db, state="sent", closes_at=utcnow() - timedelta(minutes=1))
    assert sms(db, config, "9").result == "no open survey"


def test_the_most_recent_open_survey_gets_the_reply(db: Database, config):
    old = seed_survey(db, state="delivered", sent_at=utcnow() - timedelta(days=5))
    new = seed_survey(db, state="sent", sent_at=utcnow() - timedelta(hours=1))
    sms(db, config, "9")
    assert survey_of(db, new).score == 9 and survey_of(db, old).score is None


def test_help_answers_with_help(db: Database, config):
    seed_survey(db, state="sent", locale="de-DE")
    handled = sms(db, config, "HELP")
    assert handled.result == "help" and handled.reply == responses.SmsReply("help", "de-DE")


def test_stop_revokes_sms_consent_with_the_message_as_evidence(db: Database, config):
    open_id = seed_survey(db, state="delivered")
    answered = seed_survey(db, state="answered", score=9)
    unsent = seed_survey(db, state="scheduled", consent=None)
    handled = run(db, config, inbound("Stop", sid="SMstop0001"))[0]
    assert handled.result == "opted out" and handled.reply is None
    assert survey_of(db, open_id).state == "opted_out"
    assert survey_of(db, answered).state == "answered"
    # Email consent stands, so the unsent survey moves to email instead of SMS.
    assert survey_of(db, unsent).channel == "email"
    with db.session() as s:
        record = s.scalar(
            select(ConsentRecord)
            .where(ConsentRecord.channel == "sms")
            .order_by(ConsentRecord.id.desc())
        )
        assert not record.granted
        assert (record.evidence_kind, record.evidence_ref) == ("sms_reply", "SMstop0001")


def test_start_regrants_only_after_a_revocation(db: Database, config):
    sid = seed_survey(db, state="sent", consent={"email": True})  # never consented to SMS
    assert sms(db, config, "YES").result == "opt-in: nothing to re-grant"
    customer_id = survey_of(db, sid).customer_id
    with db.session() as s:
        assert not current_consent(s, customer_id, "sms")
    sms(db, config, "STOP")
    assert sms(db, config, "start").result == "opted in"
    with db.session() as s:
        assert current_consent(s, customer_id, "sms")


def test_advanced_opt_out_verdict_wins(db: Database, config):
    sid = seed_survey(db, state="sent")
    form = {"MessageSid": "SMadv", "From": PHONE, "Body": "9 stop it", "OptOutType": "STOP"}
    [handled] = run(db, config, raw_twilio_inbound(form))
    assert handled.result == "opted out" and survey_of(db, sid).state == "opted_out"


def test_a_reply_settles_a_send_unknown(db: Database, config):
    sid = seed_survey(db, state="send_unknown", sending_at=utcnow() - timedelta(hours=2))
    assert sms(db, config, "9").result == "score"
    survey = survey_of(db, sid)
    assert survey.state == "answered" and survey.closes_at is not None


def test_after_stop_no_sms_of_any_kind_goes_out(db: Database, config):
    """STOP, then a scheduler pass and a send attempt of the customer's other SMS surveys."""
    noon = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)  # a Tuesday, 12:00 in Berlin
    sms_only = {"sms": True}
    open_id = seed_survey(db, state="sent", consent=sms_only)
    due = seed_survey(
        db,
        state="scheduled",
        due_at=noon - timedelta(minutes=1),
        config_version=config.schedule_version,
    )
    queued = seed_survey(db, state="queued", queued_at=noon - timedelta(minutes=1))
    sms(db, config, "STOP")

    email_channel = ConsoleChannel(ChannelName.email, stream=io.StringIO())
    sms_channel = ConsoleChannel(ChannelName.sms, stream=io.StringIO())
    sender = Sender(
        db.factory,
        {ChannelName.email: email_channel, ChannelName.sms: sms_channel},
        AnswerLinks("k", "https://nps.example.test"),
        "https://nps.example.test",
    )
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, noon)
    for survey_id in {*enqueued, due, queued}:
        sender.send(survey_id, config, noon)
    sender.send_reminder(open_id, 0, config, noon)
    assert sms_channel.sent == [] and email_channel.sent == []
    assert survey_of(db, open_id).state == "opted_out"
    assert survey_of(db, due).state == "suppressed"
    assert survey_of(db, queued).state == "suppressed"


# --- the answer page's domain functions ---------------------------------------------------------


def test_changed_mind_keeps_the_history(db: Database, config):
    sid = seed_survey(db, channel="email", state="delivered")
    now = utcnow()
    with db.session() as s, s.begin():
        assert responses.record_web_score(s, sid, 6, config, now).status == "recorded"
    with db.session() as s, s.begin():
        assert responses.record_web_score(s, sid, 6, config, now).status == "unchanged"
    with db.session() as s, s.begin():
        assert responses.record_web_comment(s, sid, "  too slow\x00 ", now).status == "recorded"
    with db.session() as s, s.begin():
        assert responses.record_web_score(s, sid, 8, config, now).status == "recorded"
    survey = survey_of(db, sid)
    assert (survey.state, survey.score, survey.comment) == ("completed", 8, "too slow")
    assert answers_of(db, sid) == [(6, None, "web"), (None, "too slow", "web"), (8, None, "web")]
    assert survey.answered_at is not None


def test_no_answer_after_the_window_or_in_a_final_state(db: Database, config):
    closed = seed_survey(
        db, channel="email", state="sent", closes_at=utcnow() - timedelta(seconds=1)
    )
    out = seed_survey(db, channel="email", state="opted_out")
    with db.session() as s, s.begin():
        assert responses.record_web_score(s, closed, 9, config, utcnow()).status == "closed"
        assert responses.record_web_score(s, out, 9, config, utcnow()).status == "closed"
    assert answers_of(db, closed) == [] and answers_of(db, out) == []


def test_an_answer_after_a_bounce_report_counts(db: Database, config):
    sid = seed_survey(db, channel="email", state="undeliverable", final_reason="sendgrid bounce")
    with db.session() as s, s.begin():
        assert responses.record_web_score(s, sid, 9, config, utcnow()).status == "recorded"
    survey = survey_of(db, sid)
    assert survey.state == "answered" and survey.final_reason is None


def test_comment_needs_a_score_first(db: Database, config):
    sid = seed_survey(db, channel="email", state="sent")
    with db.session() as s, s.begin():
        assert responses.record_web_comment(s, sid, "hi", utcnow()).status == "no_score"


def test_unsubscribe_is_idempotent(db: Database, config):
    sid = seed_survey(db, channel="email", state="delivered")
    for expected in ("unsubscribed", "already unsubscribed"):
        with db.session() as s, s.begin():
            assert responses.unsubscribe_email(s, sid, config, utcnow()) == expected
    assert survey_of(db, sid).state == "opted_out"
    with db.session() as s:
        revocations = s.scalar(
            select(func.count()).select_from(ConsentRecord).where(ConsentRecord.granted.is_(False))
        )
    assert revocations == 1


def test_no_free_text_is_kept_for_an_erased_customer(db: Database, config):
    from models import Customer

    web = seed_survey(db, channel="email", state="sent")
    with db.session() as s, s.begin():
        s.execute(update(Customer).values(erased_at=utcnow()))
    with db.session() as s, s.begin():
        assert responses.record_web_score(s, web, 4, config, utcnow()).status == "recorded"
    with db.session() as s, s.begin():
        responses.record_web_comment(s, web, "the courier at 1 Main St was rude", utcnow())
    survey = survey_of(db, web)
    assert survey.score == 4 and survey.comment is None  # the score counts, the text is not kept
    assert all(comment is None for _, comment, _ in answers_of(db, web))
