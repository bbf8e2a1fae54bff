"""The replay applies runs of stored delivery events together (``dispatch.responses
.delivery_batch``): every outcome is the one the events would have one by one, in their order;
the cost is a fixed number of statements per run; a run that fails is undone and its rows go one
by one, so only the failing row waits, and nothing of it stays half-written.

Real databases; the oracle is the one-by-one replay (``together=None``) of the same events.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from channels.base import RawWebhook
from dispatch import responses
from dispatch.responses import store
from dispatch.responses.intake_group import take_delivery_events
from models import Customer, InboundEvent, MessageRecord, Survey, SurveyTransition, utcnow
from tests.conftest import Database
from tests.dispatch.test_responses import seed_survey, sendgrid_event, twilio_status
from tests.dispatch.test_scheduler_claims import counting
from tests.faults import refused, slowed

Replay = Callable[[Database, Any, datetime], Any]


def together(db: Database, config: Any, now: datetime) -> Any:
    return responses.replay_unhandled_webhooks(db.factory, config, now=now)


def one_by_one(db: Database, config: Any, now: datetime) -> Any:
    return store.replay_unhandled_webhooks(db.factory, config, responses._apply, now=now)


def message_record(
    survey_id: int, provider: str, message_id: str, *, kind: str, status: str = "accepted"
) -> MessageRecord:
    """A message of the survey beside its invitation's (a reminder, or a record sharing an
    id), on the provider's channel."""
    channel = "sms" if provider == "twilio" else "email"
    return MessageRecord(
        survey_id=survey_id,
        kind=kind,
        channel=channel,
        provider=provider,
        provider_message_id=message_id,
        status=status,
    )


def scenario(db: Database, tag: str) -> tuple[dict[str, int], list[RawWebhook]]:
    """Surveys in many states and the delivery events of one replay, as providers send them:
    late and repeated statuses, a send whose commit was lost, a reminder's status, an unknown
    survey, an erased customer, two moves of one survey, an unsubscribe between two events."""
    now = utcnow()

    def survey(label: str, **values: Any) -> int:
        values.setdefault("customer", f"{tag}-{label}")
        return seed_survey(db, now=now, **values)

    ids = {
        "delivered": survey("delivered", state="sent", provider_message_id=f"SM{tag}a"),
        "failed": survey("failed", state="sent", provider_message_id=f"SM{tag}b"),
        "lost_commit": survey("lost_commit", state="sending"),
        "two_moves": survey("two_moves", state="send_unknown"),
        "by_message": survey("by_message", state="sent", provider_message_id=f"SM{tag}c"),
        "reminder": survey("reminder", state="delivered", provider_message_id=f"SM{tag}d"),
        "erased": survey("erased", state="sent", provider_message_id=f"SM{tag}e"),
        "email": survey("email", channel="email", state="sent", provider_message_id=f"sg{tag}f"),
        "unsubscribed": survey(
            "unsubscribed", channel="email", state="sent", provider_message_id=f"sg{tag}g"
        ),
    }
    with db.session() as s, s.begin():
        s.add(message_record(ids["reminder"], "twilio", f"SM{tag}r", kind="reminder"))
        erased = s.get(Survey, ids["erased"])
        assert erased is not None
        s.execute(update(Customer).where(Customer.id == erased.customer_id).values(erased_at=now))
    i = ids
    raws = [
        twilio_status(i["delivered"], f"SM{tag}a", "sent"),
        twilio_status(i["delivered"], f"SM{tag}a", "delivered"),
        twilio_status(i["failed"], f"SM{tag}b", "undelivered", error="30006"),
        twilio_status(i["lost_commit"], f"SM{tag}x", "delivered"),
        twilio_status(i["two_moves"], f"SM{tag}y", "sent"),
        twilio_status(i["two_moves"], f"SM{tag}y", "delivered"),
        twilio_status(i["two_moves"], f"SM{tag}y", "queued"),  # late: no step back
        twilio_status(None, f"SM{tag}c", "delivered"),  # found by the survey's message id
        twilio_status(i["reminder"], f"SM{tag}r", "delivered"),  # the reminder's message
        twilio_status(999_999, f"SM{tag}z", "delivered"),  # no such survey, no such message
        twilio_status(i["erased"], f"SM{tag}e", "delivered"),
        sendgrid_event(i["email"], "delivered", f"{tag}-e1", f"sg{tag}f"),
        sendgrid_event(i["email"], "open", f"{tag}-e2", f"sg{tag}f"),
        sendgrid_event(i["unsubscribed"], "delivered", f"{tag}-u1", f"sg{tag}g"),
        sendgrid_event(i["unsubscribed"], "unsubscribe", f"{tag}-u2", f"sg{tag}g"),
        sendgrid_event(i["unsubscribed"], "open", f"{tag}-u3", f"sg{tag}g"),
    ]
    return ids, raws


def outcome(db: Database, ids: dict[str, int]) -> dict[str, Any]:
    """What the replay left, by label, with database ids and clock readings taken out."""
    label = {sid: name for name, sid in ids.items()}
    seen: dict[str, Any] = {}
    with db.session() as s:
        for name, sid in ids.items():
            survey = s.get(Survey, sid)
            assert survey is not None
            seen[name] = {
                "state": survey.state,
                "provider": survey.provider,
                "message": survey.provider_message_id is not None,
                "sent_at": survey.sent_at is not None,
                "closes_at": survey.closes_at is not None,
                "reminder": survey.next_reminder_at is not None,
                "delivered_at": survey.delivered_at is not None,
                "final_reason": survey.final_reason,
                "transitions": s.execute(
                    select(
                        SurveyTransition.from_state,
                        SurveyTransition.to_state,
                        SurveyTransition.reason,
                    )
                    .where(SurveyTransition.survey_id == sid)
                    .order_by(SurveyTransition.id)
                ).all(),
                "messages": s.execute(
                    select(MessageRecord.kind, MessageRecord.status, MessageRecord.error)
                    .where(MessageRecord.survey_id == sid)
                    .order_by(MessageRecord.id)
                ).all(),
            }
        rows = s.execute(
            select(
                InboundEvent.survey_id,
                InboundEvent.result,
                InboundEvent.error,
                InboundEvent.subject_key.is_not(None),
                InboundEvent.payload.is_not(None),
                InboundEvent.handled_at.is_not(None),
            )
            .where(InboundEvent.id > seen_rows_before(s, ids))
            .order_by(InboundEvent.id)
        ).all()
    seen["rows"] = [(label.get(r[0]) if r[0] else None, *r[1:]) for r in rows]
    return seen


def seen_rows_before(session: Any, ids: dict[str, int]) -> int:
    """The last raw row of an earlier scenario in the same database (0 for the first)."""
    first = min(ids.values())
    earlier = session.scalar(
        select(InboundEvent.id)
        .where(InboundEvent.survey_id < first)
        .order_by(InboundEvent.id.desc())
        .limit(1)
    )
    return int(earlier or 0)


def replayed(db: Database, config: Any, tag: str, replay: Replay) -> dict[str, Any]:
    ids, raws = scenario(db, tag)
    responses.store_webhooks(db.factory, raws)
    later = utcnow() + timedelta(minutes=2)
    replay(db, config, later)
    return outcome(db, ids)


def test_events_applied_together_end_as_they_do_one_by_one(db: Database, config, caplog):
    alone = replayed(db, config, "one", one_by_one)
    grouped = replayed(db, config, "two", together)
    assert "not applied as a run" not in caplog.text
    assert grouped == alone
    # And the outcomes are the rules' (not two equal mistakes).
    assert alone["delivered"]["state"] == "delivered"
    assert alone["failed"]["state"] == "undeliverable"
    assert alone["failed"]["messages"] == [("invitation", "undeliverable", "error 30006")]
    assert alone["lost_commit"]["state"] == "delivered" and alone["lost_commit"]["reminder"]
    assert [t[:2] for t in alone["two_moves"]["transitions"]] == [
        ("send_unknown", "sent"),
        ("sent", "delivered"),
    ]
    assert alone["by_message"]["state"] == "delivered"
    assert alone["reminder"]["state"] == "delivered"
    assert alone["reminder"]["messages"][1][:2] == ("reminder", "delivered")
    assert alone["erased"]["state"] == "delivered"
    assert alone["unsubscribed"]["state"] == "opted_out"
    assert all(row[-1] for row in alone["rows"])  # every row applied
    erased_rows = [row for row in alone["rows"] if row[1] == "delivered" and not row[4]]
    assert erased_rows == [(None, "delivered", None, False, False, True)]


def delivered_surveys(db: Database, tag: str, n: int) -> list[RawWebhook]:
    raws = []
    for k in range(n):
        sid = seed_survey(
            db, customer=f"{tag}-{k}", state="sent", provider_message_id=f"SM{tag}{k}"
        )
        raws.append(twilio_status(sid, f"SM{tag}{k}", "delivered"))
    return raws


def test_a_run_costs_the_same_statements_for_five_events_as_for_sixty(db: Database, config, caplog):
    counts = []
    for tag, n in (("few", 5), ("many", 60)):
        responses.store_webhooks(db.factory, delivered_surveys(db, tag, n))
        with counting(db) as seen:
            report = together(db, config, utcnow() + timedelta(minutes=2))
        assert report.applied == n
        counts.append(len(seen))
    assert "not applied as a run" not in caplog.text
    assert counts[0] == counts[1]
    with db.session() as s:
        states = s.scalars(select(Survey.state)).all()
    assert set(states) == {"delivered"}


def test_a_run_that_fails_is_undone_and_only_the_failing_row_waits(db: Database, config):
    raws = delivered_surveys(db, "run", 3)
    responses.store_webhooks(db.factory, raws)
    with db.session() as s:
        sids = list(s.scalars(select(Survey.id).order_by(Survey.id)))
    now = utcnow() + timedelta(minutes=2)
    # A real failure inside the run's statements: one survey's move to delivered is refused.
    when = f"NEW.id = {sids[1]} AND NEW.state = 'delivered'"
    with refused(db, "surveys", when, on="UPDATE", message="refused for the test"):
        report = together(db, config, now)
    assert (report.applied, report.failed) == (2, 1)
    with db.session() as s:
        states = dict(s.execute(select(Survey.id, Survey.state)).all())
        refused_messages = s.scalars(
            select(MessageRecord.status).where(MessageRecord.survey_id == sids[1])
        ).all()
        refused_moves = s.scalars(
            select(SurveyTransition.id).where(SurveyTransition.survey_id == sids[1])
        ).all()
        rows = s.execute(
            select(InboundEvent.survey_id, InboundEvent.attempts, InboundEvent.error).where(
                InboundEvent.handled_at.is_(None)
            )
        ).all()
    assert states == {sids[0]: "delivered", sids[1]: "sent", sids[2]: "delivered"}
    # Nothing of the refused row's effect stayed: not its message's state, not a transition.
    assert refused_messages == ["accepted"] and refused_moves == []
    [(kept, attempts, error)] = rows
    assert kept is None and attempts == 1 and "refused for the test" in error
    # Its back-off over, the row applies.
    assert together(db, config, now + timedelta(minutes=5)).applied == 1
    with db.session() as s:
        assert s.scalar(select(Survey.state).where(Survey.id == sids[1])) == "delivered"


@pytest.mark.parametrize("order", ["delivered first", "sent first"])
def test_two_events_of_one_survey_in_one_run_never_step_back(db: Database, config, caplog, order):
    [raw_delivered] = delivered_surveys(db, "pair", 1)
    with db.session() as s:
        sid, message_id = s.execute(select(Survey.id, Survey.provider_message_id)).one()
    raw_sent = twilio_status(sid, message_id, "sent")
    pair = [raw_delivered, raw_sent] if order == "delivered first" else [raw_sent, raw_delivered]
    responses.store_webhooks(db.factory, [*pair, *delivered_surveys(db, "other", 1)])
    together(db, config, utcnow() + timedelta(minutes=2))
    assert "not applied as a run" not in caplog.text
    with db.session() as s:
        assert s.scalar(select(Survey.state).where(Survey.id == sid)) == "delivered"
        status = s.scalar(select(MessageRecord.status).where(MessageRecord.survey_id == sid))
        moves = s.execute(
            select(SurveyTransition.from_state, SurveyTransition.to_state).where(
                SurveyTransition.survey_id == sid
            )
        ).all()
    assert status == "delivered" and moves == [("sent", "delivered")]


def test_a_report_naming_only_a_message_id_finds_the_survey_an_earlier_report_gave_it(
    db: Database, config, caplog
):
    """A send whose commit was lost has no provider message id until the first report of it
    names one; a later report of the run naming only that id finds the survey, as it would one
    by one, instead of matching nothing (and being stamped applied, its payload dropped)."""
    outcomes = {}
    for tag, replay in (("one", one_by_one), ("two", together)):
        sid = seed_survey(db, customer=f"lost-{tag}", state="send_unknown")
        raws = [
            twilio_status(sid, f"SMlost{tag}", "sent"),
            twilio_status(None, f"SMlost{tag}", "delivered"),  # the callback named no survey
        ]
        responses.store_webhooks(db.factory, raws)
        replay(db, config, utcnow() + timedelta(minutes=2))
        with db.session() as s:
            state = s.scalar(select(Survey.state).where(Survey.id == sid))
            rows = s.execute(
                select(InboundEvent.result, InboundEvent.survey_id == sid)
                .where(InboundEvent.external_id.like(f"SMlost{tag}%"))
                .order_by(InboundEvent.id)
            ).all()
        outcomes[tag] = (state, [tuple(r) for r in rows])
    assert "not applied as a run" not in caplog.text
    assert (
        outcomes["two"] == outcomes["one"] == ("delivered", [("sent", True), ("delivered", True)])
    )


# --- the same random events, one by one and in runs ---------------------------------------

_STATES = ("sending", "send_unknown", "sent", "delivered", "undeliverable", "completed")
_TWILIO = (
    ("queued", ""),
    ("sent", ""),
    ("delivered", ""),
    ("undelivered", "30006"),
    ("failed", "30007"),
)
_SENDGRID = (
    "processed",
    "deferred",
    "delivered",
    "bounce",
    "dropped",
    "open",
    "click",
    "unsubscribe",
)


def _random_world(
    db: Database, rnd: random.Random, tag: str, now: datetime
) -> tuple[list[int], list[RawWebhook]]:
    """A few surveys (shared customers, erased ones, reminders, repeated message records, sends
    whose commit was lost) and up to fourteen reports about them, some naming the wrong survey,
    none, or one that does not exist, some about other messages or unknown ones."""
    ids: list[int] = []
    message_ids: list[str] = []
    channels: list[str] = []
    reminders: list[str | None] = []
    for i in range(rnd.randint(2, 5)):
        state, channel = rnd.choice(_STATES), rnd.choice(("sms", "email"))
        prefix, provider = ("SM", "twilio") if channel == "sms" else ("sg", "sendgrid")
        lost = state in ("sending", "send_unknown")
        has_id = not lost or rnd.random() < 0.3
        message_id = f"{prefix}{tag}p{i}"
        values: dict[str, Any] = {"provider_message_id": message_id if has_id else None}
        if has_id and lost:
            values["provider"] = provider
        customer = f"{tag}-c0" if i and rnd.random() < 0.3 else f"{tag}-c{i}"
        sid = seed_survey(db, now=now, state=state, channel=channel, customer=customer, **values)
        records = []
        if has_id and (lost or rnd.random() < 0.25):
            records.append(("invitation", message_id, "delivered" if not lost else "accepted"))
        reminder = f"{prefix}{tag}r{i}" if rnd.random() < 0.3 else None
        if reminder:
            records.append(("reminder", reminder, "accepted"))
        with db.session() as s, s.begin():
            for kind, record_id, status in records:
                s.add(message_record(sid, provider, record_id, kind=kind, status=status))
            if rnd.random() < 0.2:
                survey = s.get(Survey, sid)
                assert survey is not None
                s.execute(
                    update(Customer).where(Customer.id == survey.customer_id).values(erased_at=now)
                )
        ids.append(sid)
        message_ids.append(message_id)
        channels.append(channel)
        reminders.append(reminder)
    raws: list[RawWebhook] = []
    stamp = int(now.timestamp()) - 30
    for k in range(rnd.randint(2, 14)):
        i = rnd.randrange(len(ids))
        named = rnd.choices(
            [ids[i], None, 900_000 + i, ids[rnd.randrange(len(ids))]], [55, 20, 10, 15]
        )[0]
        prefix = "SM" if channels[i] == "sms" else "sg"
        about = rnd.random()
        if about < 0.5:
            message_id = message_ids[i]
        elif about < 0.65 and reminders[i]:
            message_id = reminders[i] or ""
        elif about < 0.8:
            message_id = message_ids[rnd.randrange(len(ids))]
        else:
            message_id = f"{prefix}{tag}n{rnd.randrange(3)}"
        if (channels[i] == "sms") != (rnd.random() < 0.1):
            status, error = rnd.choice(_TWILIO)
            raws.append(twilio_status(named, message_id, status, error))
        else:
            kind = rnd.choice(_SENDGRID)
            raws.append(sendgrid_event(named, kind, f"{tag}-e{k}", message_id, timestamp=stamp))
    return ids, raws


def _shared_world(
    db: Database, rnd: random.Random, tag: str, now: datetime
) -> tuple[list[int], list[RawWebhook]]:
    """Surveys and message records (of both providers) sharing a few message ids, and reports
    naming those ids: which survey a report finds is then decided by the lowest-id rules, and
    by ids the run's own reports assign."""
    pool = [f"X{tag}m{k}" for k in range(3)]
    ids: list[int] = []
    for i in range(rnd.randint(2, 6)):
        state, channel = rnd.choice(_STATES), rnd.choice(("sms", "email"))
        message_id = rnd.choice(pool) if rnd.random() < 0.6 else None
        values: dict[str, Any] = {"provider_message_id": message_id}
        if message_id and state in ("sending", "send_unknown"):
            values["provider"] = "twilio" if channel == "sms" else "sendgrid"
        sid = seed_survey(
            db, now=now, state=state, channel=channel, customer=f"{tag}-c{i}", **values
        )
        with db.session() as s, s.begin():
            for _ in range(rnd.randint(0, 2)):
                provider = rnd.choice(("twilio", "sendgrid"))
                kind = rnd.choice(("invitation", "reminder"))
                s.add(message_record(sid, provider, rnd.choice(pool), kind=kind))
        ids.append(sid)
    raws: list[RawWebhook] = []
    stamp = int(now.timestamp()) - 30
    seen: set[tuple[str, str]] = set()
    for k in range(rnd.randint(2, 16)):
        named = rnd.choices([rnd.choice(ids), None, 900_000 + k], [45, 45, 10])[0]
        message_id = rnd.choice(pool)
        if rnd.random() < 0.5:
            status, error = rnd.choice(_TWILIO)
            if (message_id, status) not in seen:  # the same report twice is one stored row
                seen.add((message_id, status))
                raws.append(twilio_status(named, message_id, status, error))
        else:
            kind = rnd.choice(_SENDGRID[:-1])  # no unsubscribe: it would stop whole customers
            raws.append(sendgrid_event(named, kind, f"{tag}-e{k}", message_id, timestamp=stamp))
    return ids, raws


def _world_outcome(db: Database, ids: list[int], tag: str, first_row: int) -> Any:
    """Everything the replay wrote about the world, with its tag and ids taken out."""
    label = {sid: n for n, sid in enumerate(ids)}

    def plain(value: Any) -> Any:
        """Without the world's tag; a time only as set or not (reports without a time of
        their own take the moment they were stored, which differs between the two worlds)."""
        if isinstance(value, datetime):
            return "set"
        if isinstance(value, (tuple, list)) or type(value).__name__ == "Row":
            return tuple(plain(v) for v in value)
        return value.replace(tag, "#") if isinstance(value, str) else value

    seen: dict[Any, Any] = {}
    with db.session() as s:
        for n, sid in enumerate(ids):
            survey = s.get(Survey, sid)
            assert survey is not None
            seen[n] = plain(
                (
                    survey.state,
                    survey.provider,
                    plain(survey.provider_message_id),
                    survey.sent_at,
                    survey.closes_at,
                    survey.next_reminder_at,
                    survey.delivered_at,
                    survey.final_reason,
                    s.execute(
                        select(
                            SurveyTransition.from_state,
                            SurveyTransition.to_state,
                            SurveyTransition.reason,
                            SurveyTransition.at,
                        )
                        .where(SurveyTransition.survey_id == sid)
                        .order_by(SurveyTransition.id)
                    ).all(),
                    [
                        (kind, status, error, plain(message_id))
                        for kind, status, error, message_id in s.execute(
                            select(
                                MessageRecord.kind,
                                MessageRecord.status,
                                MessageRecord.error,
                                MessageRecord.provider_message_id,
                            )
                            .where(MessageRecord.survey_id == sid)
                            .order_by(MessageRecord.id)
                        )
                    ],
                )
            )
        seen["rows"] = [
            plain((result, label.get(survey_id, survey_id), *rest))
            for result, survey_id, *rest in s.execute(
                select(
                    InboundEvent.result,
                    InboundEvent.survey_id,
                    InboundEvent.subject_key.is_not(None),
                    InboundEvent.payload.is_not(None),
                    InboundEvent.handled_at,
                    InboundEvent.error,
                )
                .where(InboundEvent.id >= first_row)
                .order_by(InboundEvent.id)
            )
        ]
    return seen


@pytest.mark.parametrize("world", [_random_world, _shared_world], ids=["own", "shared"])
def test_random_reports_end_in_runs_as_they_do_one_by_one(
    db: Database, config, caplog, world: Callable[..., tuple[list[int], list[RawWebhook]]]
):
    now = utcnow().replace(microsecond=0)
    differ = []
    for seed in range(40):
        ends = []
        for tag, replay in ((f"a{seed}x", one_by_one), (f"b{seed}x", together)):
            ids, raws = world(db, random.Random(seed), tag, now)
            with db.session() as s:
                first_row = (s.scalar(select(func.max(InboundEvent.id))) or 0) + 1
            responses.store_webhooks(db.factory, raws)
            replay(db, config, now + timedelta(minutes=2))
            ends.append(_world_outcome(db, ids, tag, first_row))
        if ends[0] != ends[1]:
            differ.append(
                (seed, {k: (ends[0][k], ends[1][k]) for k in ends[0] if ends[0][k] != ends[1][k]})
            )
    assert "not applied as a run" not in caplog.text
    assert not differ, differ[:3]


# --- a run beside status callbacks taken live (PostgreSQL row locks) ------------------------


def _live_beside_a_run(db: Database, config: Any, live: list[RawWebhook]) -> list[BaseException]:
    """Take ``live`` as the status route does while the replay applies what is stored (it starts
    once the live group holds its first message); returns what the live group raised."""
    errors: list[BaseException] = []

    def take() -> None:
        try:
            take_delivery_events(db.factory, live)
        except BaseException as exc:
            errors.append(exc)

    taking = threading.Thread(target=take)
    taking.start()
    time.sleep(0.5)
    together(db, config, utcnow() + timedelta(minutes=2))
    taking.join()
    return errors


def _message_of(db: Database, provider_message_id: str) -> int:
    with db.session() as s:
        found = s.scalar(
            select(MessageRecord.id).where(MessageRecord.provider_message_id == provider_message_id)
        )
    assert found is not None
    return found


@pytest.mark.parametrize("stored", [1, 2], ids=["one by one", "a run"])
def test_a_live_callback_storing_a_row_tied_to_a_survey_the_replay_holds_waits_no_deadlock(
    pg_db: Database, config, caplog, stored: int
):
    """The live group holds the message and stores a raw row tied to the survey (a foreign-key
    check on the survey); the replay holds the survey and wants the message. The replay's
    survey lock lets the foreign-key check through, so the live group finishes and the replay
    follows: for a run, and for a row alone (applied one by one)."""
    db = pg_db
    raws = delivered_surveys(db, "held", stored)
    responses.store_webhooks(db.factory, raws)
    with db.session() as s:
        sid = s.scalar(select(Survey.id).where(Survey.provider_message_id == "SMheld0"))
    when = f"NEW.id = {_message_of(db, 'SMheld0')} AND NEW.status = 'sent'"
    with slowed(db, "messages", when, 2):
        errors = _live_beside_a_run(db, config, [twilio_status(sid, "SMheld0", "sent")])
    assert errors == [] and "deadlock" not in caplog.text.lower()
    with db.session() as s:
        assert set(s.scalars(select(MessageRecord.status))) == {"delivered"}
        assert set(s.scalars(select(Survey.state))) == {"delivered"}
        assert s.scalar(select(func.count()).where(InboundEvent.handled_at.is_(None))) == 0


def test_a_run_and_a_live_group_take_their_messages_in_the_same_order(
    pg_db: Database, config, caplog
):
    """Two messages whose record ids sort one way and provider ids the other: a live group
    advancing both holds the first (by provider id) while the run wants them; the run takes
    them in the group's order, so one waits for the other instead of each for the other."""
    db = pg_db
    first = seed_survey(db, customer="order-a", state="sent", provider_message_id="SMzzzA")
    second = seed_survey(db, customer="order-b", state="sent", provider_message_id="SMaaaB")
    assert _message_of(db, "SMzzzA") < _message_of(db, "SMaaaB")
    responses.store_webhooks(
        db.factory,
        [twilio_status(first, "SMzzzA", "delivered"), twilio_status(second, "SMaaaB", "delivered")],
    )
    live = [twilio_status(first, "SMzzzA", "sent"), twilio_status(second, "SMaaaB", "sent")]
    when = f"NEW.id = {_message_of(db, 'SMaaaB')} AND NEW.status = 'sent'"
    with slowed(db, "messages", when, 2):
        errors = _live_beside_a_run(db, config, live)
    assert errors == [] and "deadlock" not in caplog.text.lower()
    with db.session() as s:
        assert set(s.scalars(select(MessageRecord.status))) == {"delivered"}
        assert set(s.scalars(select(Survey.state))) == {"delivered"}
