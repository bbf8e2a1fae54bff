"""Erasure leaves nothing that identifies the person; the export holds everything about them.

One customer lives through everything that stores data about a person (a purchase with email,
phone and name, consent events, an SMS invitation delivered and answered with a comment, an
email invitation with SendGrid events, one of them unmatched, an answer-page comment, a dead
letter), next to another customer who does the same. The export is checked against every
personal column of ``models.personal_data``; the erasure too, on SQLite and PostgreSQL, and on
PostgreSQL the acceptance check reads a ``pg_dump --data-only``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import JSON, String, Text, insert, select
from sqlalchemy.engine import make_url

from channels.sendgrid_email.webhooks import raw_sendgrid_events
from channels.twilio_sms.webhooks import raw_twilio_inbound, raw_twilio_status
from config import OperatorConfig
from dispatch import responses
from dispatch.scheduler import Scheduler
from ingest.service import ingest_event, store_dead_letter
from ingest.subjects import export_customer, rekey_legacy_pseudonyms
from migrations.runner import downgrade, upgrade
from models import (
    Base,
    ConsentRecord,
    Customer,
    DeadLetter,
    ErasedSubject,
    InboundEvent,
    Order,
    Survey,
)
from models.erasure import erased_at
from models.personal_data import PERSONAL, PSEUDONYMS
from models.privacy import Pseudonymiser, legacy_tombstone
from tests.conftest import Database, service_missing, service_url
from tests.dispatch.test_sending import (
    NOON,
    SENDGRID_ENV,
    SENDGRID_SEND,
    TWILIO_ENV,
    TWILIO_MESSAGES,
    make_sender,
    twilio_created,
)
from tests.factories import consent_event, erased, order_event, purchase
from wiring import services as wiring

PG_DUMP = "/usr/lib/postgresql/15/bin/pg_dump"


@dataclass(frozen=True)
class Person:
    id: str
    email: str  # as the shop sends it; stored lower-cased
    phone: str  # E.164
    national_phone: str  # as the shop sends it
    first_name: str
    sms_comment: str
    web_comment: str
    order: str  # prefix of their order numbers, which name no one

    def needles(self) -> list[str]:
        """What must not survive an erasure, lower-cased (emails are matched whatever their
        case; the phone in E.164, national and bare forms)."""
        digits = self.phone.removeprefix("+40")
        return [
            self.id.lower(),
            self.email.lower(),
            self.phone,
            "0" + digits,
            self.national_phone,
            digits,
            self.first_name.lower(),
            self.sms_comment.lower(),
            self.web_comment.lower(),
        ]


QUILLON = Person(
    id="cust-Quillon-77",
    email="Quillon.X@example.org",
    phone="+40721555444",
    national_phone="0721 555 444",
    first_name="Quillon",
    sms_comment="the blue kettle rattled",
    web_comment="lid squeaks at every boil",
    order="A-1001",
)
MARTA = Person(
    id="cust-Marta-12",
    email="marta.o@example.org",
    phone="+40722666111",
    national_phone="0722 666 111",
    first_name="Martuska",
    sms_comment="courier was kind and quick",
    web_comment="the box smelled of pine",
    order="A-2002",
)
ERASED_AT = "2026-11-25T10:00:00Z"
_seq = itertools.count(1)


@pytest.fixture(autouse=True)
def providers_configured(monkeypatch):
    for key, value in {**TWILIO_ENV, **SENDGRID_ENV}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def flow_config(config: OperatorConfig) -> OperatorConfig:
    """No frequency cap: one customer gets an SMS and an email survey for two purchases."""
    return config.model_copy(
        update={"contact": config.contact.model_copy(update={"frequency_cap": timedelta(0)})}
    )


@pytest.fixture
def providers(respx_mock) -> None:
    def twilio(request: httpx.Request) -> httpx.Response:
        return twilio_created(f"SM{next(_seq):032d}")

    def sendgrid(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202, headers={"X-Message-Id": f"sgmsg{next(_seq):06d}"})

    respx_mock.post(TWILIO_MESSAGES).mock(side_effect=twilio)
    respx_mock.post(SENDGRID_SEND).mock(side_effect=sendgrid)


# --- the flow -------------------------------------------------------------------------------


def _purchase(person: Person, order_id: str, at: str, consent: dict[str, Any]) -> dict[str, Any]:
    event = purchase(
        order_id,
        customer_id=person.id,
        at=at,
        email=person.email,
        phone=person.national_phone,
        consent=consent,
    )
    event["customer"]["first_name"] = person.first_name
    return event


def shop_events(db: Database, config: OperatorConfig, person: Person) -> None:
    ingest = [
        _purchase(
            person, f"{person.order}-A", "2026-11-18T10:00:00Z", {"sms": True, "email": False}
        ),
        consent_event("granted", person.id, at="2026-11-18T12:00:00Z", email=True),
        _purchase(person, f"{person.order}-B", "2026-11-18T13:00:00Z", {"email": True}),
        order_event("delivered", f"{person.order}-A", at="2026-11-19T10:00:00Z"),
        order_event("delivered", f"{person.order}-B", at="2026-11-19T10:00:00Z"),
    ]
    for event in ingest:
        assert ingest_event(db.factory, event, config, NOON).status == "accepted"


def surveys_of(db: Database, person: Person) -> dict[str, Survey]:
    with db.session() as s:
        rows = s.scalars(
            select(Survey).join(Customer).where(Customer.external_id == person.id)
        ).all()
        return {row.channel: row for row in rows}


def webhooks(db: Database, config: OperatorConfig, raws: list[responses.RawWebhook]) -> list[str]:
    handled = responses.ingest_webhooks(db.factory, config, raws, now=NOON + timedelta(hours=1))
    assert all(h.status == "applied" for h in handled), handled
    return [h.result or "" for h in handled]


def provider_events(db: Database, config: OperatorConfig, person: Person) -> None:
    surveys = surveys_of(db, person)
    sms, email = surveys["sms"], surveys["email"]
    assert sms.provider_message_id and email.provider_message_id
    status = {
        "MessageSid": sms.provider_message_id,
        "MessageStatus": "delivered",
        "To": person.phone,
        "From": TWILIO_ENV["TWILIO_FROM"],
    }
    assert webhooks(db, config, [raw_twilio_status(status, f"survey_id={sms.id}")]) == ["delivered"]
    for body in ("9", person.sms_comment):
        form = {
            "MessageSid": f"SM{next(_seq):032d}",
            "From": person.phone,
            "To": TWILIO_ENV["TWILIO_FROM"],
            "Body": body,
        }
        webhooks(db, config, [raw_twilio_inbound(form)])
    at = int(NOON.timestamp())
    sent = {"email": person.email.lower(), "timestamp": at, "survey_id": str(email.id)}
    message = f"{email.provider_message_id}.recvd-5f7d9-1"
    events = [
        {**sent, "event": "delivered", "sg_event_id": f"sg-{next(_seq)}", "sg_message_id": message},
        {**sent, "event": "open", "sg_event_id": f"sg-{next(_seq)}", "sg_message_id": message},
        # Unmatched: no survey id, a message id we never sent, the address all the same.
        {
            "email": person.email,
            "timestamp": at,
            "event": "bounce",
            "type": "bounce",
            "sg_event_id": f"sg-{next(_seq)}",
            "sg_message_id": "neverours.recvd-1",
        },
    ]
    raws = raw_sendgrid_events(json.dumps(events).encode())
    assert webhooks(db, config, raws) == ["delivered", "engagement: opened", "no matching survey"]


def live_through_everything(db: Database, config: OperatorConfig, person: Person) -> None:
    shop_events(db, config, person)
    enqueued: list[int] = []
    Scheduler(db.factory, enqueued.append).tick(config, NOON)
    sender = make_sender(db)
    for survey_id in enqueued:
        assert sender.send(survey_id, config, NOON).state == "sent"
    provider_events(db, config, person)
    email = surveys_of(db, person)["email"]
    with db.session() as s, s.begin():
        later = NOON + timedelta(hours=2)
        assert responses.record_web_score(s, email.id, 10, config, later).status == "recorded"
        answer = responses.record_web_comment(s, email.id, person.web_comment, later)
        assert answer.status == "recorded"
    bad = _purchase(person, f"{person.order}-C", "2026-11-24T09:00:00Z", {"email": True})
    bad["total"] = {"amount": "twelve", "currency": "EUR"}
    store_dead_letter(db.factory, bad, "total.amount: not a decimal amount")
    surveys = surveys_of(db, person)
    assert (surveys["sms"].comment, surveys["email"].comment) == (
        person.sms_comment,
        person.web_comment,
    )


@pytest.fixture
def two_customers(db: Database, flow_config: OperatorConfig, providers) -> Database:
    live_through_everything(db, flow_config, QUILLON)
    live_through_everything(db, flow_config, MARTA)
    return db


def erase(db: Database, config: OperatorConfig, person: Person) -> str | None:
    result = ingest_event(db.factory, erased(person.id, at=ERASED_AT), config, NOON + timedelta(2))
    assert result.status == "accepted"
    return result.outcome


# --- finding the rows about a person --------------------------------------------------------


def _text_columns(table: Any) -> list[str]:
    return [c.name for c in table.columns if isinstance(c.type, String | Text | JSON)]


def _mentions(value: object, person: Person) -> bool:
    text = json.dumps(value, default=str, ensure_ascii=False).lower()
    return any(needle in text for needle in person.needles())


def rows_about(db: Database, person: Person, key: str) -> dict[str, set[Any]]:
    """Primary keys of every row about ``person``, found without the code under test: by their
    customer row and surveys, by their keyed pseudonym, or by any text that mentions them."""
    found: dict[str, set[Any]] = {t.name: set() for t in Base.metadata.sorted_tables}
    with db.engine.connect() as conn:
        customer_ids = {
            r.id for r in conn.execute(select(Customer.id).where(Customer.external_id == person.id))
        }
        found["customers"] |= customer_ids
        survey_ids: set[Any] = set()
        for table in Base.metadata.sorted_tables:
            pk = [c.name for c in table.primary_key.columns]
            for row in conn.execute(select(table)).mappings():
                ident = row[pk[0]]
                about = (
                    ("customer_id" in row and row["customer_id"] in customer_ids)
                    or ("survey_id" in row and row["survey_id"] in survey_ids)
                    or ("subject_key" in row and row["subject_key"] == key)
                    or (table.name == "erased_subjects" and ident == key)
                    or any(_mentions(row[c], person) for c in _text_columns(table) if row[c])
                )
                if about:
                    found[table.name].add(ident)
                    if table.name == "surveys":
                        survey_ids.add(ident)
    return found


def mentions_anywhere(db: Database, person: Person) -> list[tuple[str, str]]:
    """Every (table, column) where some row's text names ``person``."""
    found = []
    with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            columns = _text_columns(table)
            for row in conn.execute(select(*(table.c[c] for c in columns))).mappings():
                found += [(table.name, c) for c in columns if row[c] and _mentions(row[c], person)]
    return found


def values_in(db: Database, table: str, column: str, ids: set[Any]) -> list[Any]:
    t = Base.metadata.tables[table]
    pk = next(iter(t.primary_key.columns))
    with db.engine.connect() as conn:
        return [
            v
            for v in conn.scalars(select(t.c[column]).where(pk.in_(ids)))
            if v is not None and v != ""
        ]


def leaves(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)


def snapshot(db: Database, ids: dict[str, set[Any]]) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with db.engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            pk = next(iter(table.primary_key.columns))
            rows = conn.execute(select(table).where(pk.in_(ids[table.name])).order_by(pk))
            out[table.name] = [dict(r) for r in rows.mappings()]
    return out


# --- the proofs ----------------------------------------------------------------------------


def test_export_holds_every_personal_value_stored_about_them(
    two_customers: Database, pseudonymiser: Pseudonymiser
):
    db = two_customers
    about = rows_about(db, QUILLON, pseudonymiser.subject(QUILLON.id))
    export = export_customer(db.factory, QUILLON.id)
    assert export is not None
    exported = list(leaves(json.loads(json.dumps(export, default=str))))
    checked = set()
    for table, columns in PERSONAL.items():
        for column in columns:
            for stored in values_in(db, table, column, about[table]):
                # A dead letter's event is exported parsed.
                is_text_json = isinstance(stored, str) and stored.startswith("{")
                value = json.loads(stored) if is_text_json else stored
                assert value in exported, f"{table}.{column} = {value!r} is not in the export"
                checked.add((table, column))
    # The flow stored something in every personal column (message bodies are kept for the
    # console channel only), and it is all there; nothing of the other customer is.
    everything = {(t, c) for t, columns in PERSONAL.items() for c in columns}
    assert checked == everything - {("messages", "body")}
    text = json.dumps(export, default=str).lower()
    for needle in [*QUILLON.needles()[:3], QUILLON.sms_comment, QUILLON.web_comment]:
        assert needle.lower() in text
    assert not any(needle in text for needle in MARTA.needles())
    assert export_customer(db.factory, "nobody-here") is None


def test_erasure_empties_every_personal_column_and_touches_no_one_else(
    two_customers: Database, flow_config: OperatorConfig, pseudonymiser: Pseudonymiser
):
    db = two_customers
    key = pseudonymiser.subject(QUILLON.id)
    about = rows_about(db, QUILLON, key)
    other = rows_about(db, MARTA, pseudonymiser.subject(MARTA.id))
    assert about["inbound_events"] and about["dead_letters"] and about["answers"]
    assert not any(about[t] & other[t] for t in about), "the flow mixed the two customers"
    marta_before = snapshot(db, other)

    assert erase(db, flow_config, QUILLON) == "erased"

    for table, columns in {**PERSONAL, **PSEUDONYMS}.items():
        if table == "erased_subjects":
            continue
        for column in columns:
            left = values_in(db, table, column, about[table])
            if (table, column) == ("customers", "external_id"):
                assert len(left) == 1 and left[0].startswith("erased:")
            else:
                assert left == [], f"{table}.{column} still holds {left!r}"
    assert values_in(db, "dead_letters", "id", about["dead_letters"]) == []
    assert values_in(db, "inbound_events", "survey_id", about["inbound_events"]) == []
    # No text column of any row still names them; the anonymous counts survive.
    assert mentions_anywhere(db, QUILLON) == []
    assert mentions_anywhere(db, MARTA) != []
    with db.session() as s:
        surveys = s.execute(select(Survey.channel, Survey.score, Survey.state).order_by(Survey.id))
        scores = [(ch, score, state) for ch, score, state in surveys if ch]
        assert ("sms", 9, "completed") in scores and ("email", 10, "completed") in scores
        assert s.scalar(select(ErasedSubject.subject_hash)) == key
        assert s.scalar(select(InboundEvent.id).where(InboundEvent.subject_key == key)) is None
        assert len(s.scalars(select(Order).where(Order.customer_id.is_not(None))).all()) == 4
    # Precise: every row about the other customer is exactly as it was.
    assert snapshot(db, other) == marta_before


def test_pg_dump_holds_nothing_of_the_erased_person(
    pg_db: Database, flow_config: OperatorConfig, providers
):
    live_through_everything(pg_db, flow_config, QUILLON)
    live_through_everything(pg_db, flow_config, MARTA)
    assert QUILLON.first_name.lower() in dump(pg_db).lower()  # the check can see them
    erase(pg_db, flow_config, QUILLON)
    text = dump(pg_db).lower()
    left = [needle for needle in QUILLON.needles() if needle in text]
    assert left == [], f"the dump still holds {left}"
    assert all(needle in text for needle in MARTA.needles()), "the other customer was touched"


def dump(database: Database) -> str:
    binary = PG_DUMP if Path(PG_DUMP).exists() else shutil.which("pg_dump")
    if binary is None:
        service_missing("pg_dump")
    assert binary is not None
    url = make_url(service_url("NPS_TEST_POSTGRES_URL", "PostgreSQL"))
    run = subprocess.run(
        [
            binary,
            "--data-only",
            "--host",
            url.host or "127.0.0.1",
            "--port",
            str(url.port or 5432),
            "--username",
            url.username or "postgres",
            "--dbname",
            url.database or "",
        ],
        env={**os.environ, "PGPASSWORD": url.password or ""},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "COPY public.customers" in run.stdout
    return run.stdout


# --- the tombstone and the keys ------------------------------------------------------------


def test_tombstone_is_a_keyed_pseudonym_that_still_refuses_late_events(
    db: Database, config: OperatorConfig, now, pseudonymiser: Pseudonymiser
):
    later = now + timedelta(days=3)
    ingest_event(db.factory, purchase("K-1", customer_id=QUILLON.id), config, now)
    erase(db, config, QUILLON)
    with db.session() as s:
        [tombstone] = s.scalars(select(ErasedSubject.subject_hash)).all()
        assert tombstone == pseudonymiser.subject(QUILLON.id)
        # Hashing candidate ids, with or without the old scheme, finds nothing.
        assert tombstone != hashlib.sha256(QUILLON.id.encode()).hexdigest()
        assert tombstone != Pseudonymiser("another-secret").subject(QUILLON.id)
        assert erased_at(s, QUILLON.id) is not None
    late = purchase("K-2", customer_id=QUILLON.id, at="2026-11-21T10:00:00Z", email=QUILLON.email)
    assert ingest_event(db.factory, late, config, later).outcome == "customer erased"
    with db.session() as s:
        assert s.scalar(select(Customer).where(Customer.email == QUILLON.email.lower())) is None
        order = s.scalar(select(Order).where(Order.external_id == "K-2"))
        assert order is not None and order.customer_id is None  # counted, tied to no one
        ledger = s.scalar(select(InboundEvent).where(InboundEvent.external_id == late["event_id"]))
        assert (ledger.subject_key, ledger.fingerprint, ledger.payload) == (None, None, None)
    # A copy of that late event is still recognised.
    assert ingest_event(db.factory, late, config, later).status == "duplicate"


def test_a_late_consent_event_about_an_erased_customer_keeps_no_link_to_them(
    db: Database, config: OperatorConfig, now
):
    ingest_event(db.factory, purchase("K-5", customer_id=QUILLON.id), config, now)
    erase(db, config, QUILLON)
    late = consent_event("revoked", QUILLON.id, at="2026-11-21T10:00:00Z", email=False)
    result = ingest_event(db.factory, late, config, now + timedelta(days=3))
    assert result.status == "accepted" and result.outcome == "customer erased"
    with db.session() as s:
        ledger = s.scalar(select(InboundEvent).where(InboundEvent.external_id == late["event_id"]))
        assert (ledger.subject_key, ledger.fingerprint, ledger.payload) == (None, None, None)


def test_ledger_and_dead_letters_hold_keyed_pseudonyms_not_ids(
    db: Database, config: OperatorConfig, now, pseudonymiser: Pseudonymiser
):
    ingest_event(db.factory, purchase("K-3", customer_id=QUILLON.id), config, now)
    letter = {"type": "purchase.completed", "customer": {"id": QUILLON.id}}
    store_dead_letter(db.factory, letter, "type: incomplete")
    with db.session() as s:
        key = pseudonymiser.subject(QUILLON.id)
        assert s.scalars(select(InboundEvent.subject_key)).all() == [key]
        assert s.scalars(select(DeadLetter.subject_key)).all() == [key]
        assert QUILLON.id not in s.scalar(select(DeadLetter.subject_key))


def test_a_dead_letter_about_an_erased_person_keeps_nothing_personal(
    db: Database, config: OperatorConfig, now
):
    erase(db, config, QUILLON)
    late = _purchase(QUILLON, "K-4", "2026-11-21T10:00:00Z", {"email": True})
    late["total"] = {"amount": "twelve", "currency": "EUR"}
    store_dead_letter(db.factory, late, "total.amount: not a decimal amount")
    # After the erasure: a customer again, whose letter is kept whole.
    again = _purchase(QUILLON, "K-5", "2026-11-26T10:00:00Z", {"email": True})
    again["total"] = {"amount": "twelve", "currency": "EUR"}
    store_dead_letter(db.factory, again, "total.amount: not a decimal amount")
    with db.session() as s:
        first, second = s.scalars(select(DeadLetter).order_by(DeadLetter.id)).all()
    assert json.loads(first.payload) == {
        "type": "purchase.completed",
        "event_id": late["event_id"],
        "occurred_at": "2026-11-21T10:00:00Z",
        "order_id": "K-4",
    }
    assert first.subject_key is None and "customer erased" in first.error
    assert json.loads(second.payload) == again and second.subject_key is not None


def test_erasure_finds_dead_letters_and_pending_webhooks_without_a_key(
    db: Database, config: OperatorConfig, now
):
    """Letters stored before keys existed (their key emptied by migration 0003) and webhooks
    not applied yet are found by what they say."""
    ingest_event(db.factory, _purchase(QUILLON, "K-6", "2026-11-19T10:00:00Z", {}), config, now)
    letter = store_dead_letter(db.factory, {"customer": {"id": QUILLON.id}, "x": 1}, "bad")
    other = store_dead_letter(db.factory, {"customer": {"id": MARTA.id}, "x": 1}, "bad")
    form = {"MessageSid": "SM" + "7" * 32, "From": QUILLON.phone, "To": "+1500", "Body": "hi"}
    [pending] = responses.store_webhooks(db.factory, [raw_twilio_inbound(form)])
    with db.session() as s, s.begin():
        s.get(DeadLetter, letter).subject_key = None
        s.get(DeadLetter, other).subject_key = None
    erase(db, config, QUILLON)
    with db.session() as s:
        assert s.scalars(select(DeadLetter.id)).all() == [other]
        assert s.get(InboundEvent, pending.row_id).payload is None
    handled = responses.handle_webhook(db.factory, config, pending.row_id, now=now)
    assert handled.result == "payload erased"


# --- provider webhooks ---------------------------------------------------------------------


def test_unmatched_webhooks_keep_no_payload(db: Database, config: OperatorConfig, now):
    stranger = {"MessageSid": "SM" + "8" * 32, "From": "+40733000999", "To": "+1", "Body": "9"}
    sendgrid = [
        {
            "email": "stranger@example.org",
            "event": "unsubscribe",
            "sg_event_id": "sg-u-1",
            "timestamp": int(now.timestamp()),
        },
        {
            "email": "stranger@example.org",
            "event": "delivered",
            "sg_event_id": "sg-u-2",
            "timestamp": int(now.timestamp()),
        },
    ]
    raws = [
        raw_twilio_inbound(stranger),
        *raw_sendgrid_events(json.dumps(sendgrid).encode()),
    ]
    handled = responses.ingest_webhooks(db.factory, config, raws, now=now)
    assert [h.result for h in handled] == [
        "no open survey",
        "consent event: no customer",
        "no matching survey",
    ]
    with db.session() as s:
        rows = s.scalars(select(InboundEvent).order_by(InboundEvent.id)).all()
        assert [(r.external_id, r.result) for r in rows] == [
            ("SM" + "8" * 32, "no open survey"),
            ("sg-u-1", "consent event: no customer"),
            ("sg-u-2", "no matching survey"),
        ]
        assert [(r.payload, r.subject_key, r.survey_id) for r in rows] == [(None, None, None)] * 3
    # A copy is still recognised by the provider's id.
    again = responses.ingest_webhooks(db.factory, config, raws[:1], now=now)
    assert [h.status for h in again] == ["duplicate"]


def test_late_callback_does_not_relink_an_erased_customer(
    db: Database, config: OperatorConfig, now
):
    """A send that was in flight at the erasure: the provider's callback still counts the
    invitation, but neither its message id nor its payload is kept, and no reminder is due."""
    from tests.dispatch.test_responses import seed_survey

    survey_id = seed_survey(db, state="sending", customer=QUILLON.id, phone=QUILLON.phone)
    erase(db, config, QUILLON)
    form = {
        "MessageSid": "SM" + "9" * 32,
        "MessageStatus": "delivered",
        "To": QUILLON.phone,
        "From": TWILIO_ENV["TWILIO_FROM"],
    }
    raw = raw_twilio_status(form, f"survey_id={survey_id}")
    [handled] = responses.ingest_webhooks(db.factory, config, [raw], now=now)
    assert handled.result == "delivered"
    with db.session() as s:
        survey = s.get(Survey, survey_id)
        assert survey.state == "delivered" and survey.sent_at is not None
        assert (survey.provider_message_id, survey.next_reminder_at) == (None, None)
        row = s.scalar(select(InboundEvent).where(InboundEvent.source == "twilio_status"))
        assert (row.payload, row.survey_id, row.subject_key) == (None, None, None)
        assert (
            s.scalar(
                select(ConsentRecord.evidence_ref).where(ConsentRecord.evidence_ref.is_not(None))
            )
            is None
        )


def test_an_unsubscribe_for_an_erased_customer_records_no_consent(
    db: Database, config: OperatorConfig, now
):
    from tests.dispatch.test_responses import seed_survey

    survey_id = seed_survey(
        db, channel="email", state="delivered", customer=QUILLON.id, email=QUILLON.email, now=now
    )
    erase(db, config, QUILLON)
    with db.session() as s:
        consents = len(s.scalars(select(ConsentRecord)).all())
    event = {
        "email": QUILLON.email,
        "event": "unsubscribe",
        "sg_event_id": "sg-late-1",
        "timestamp": int(now.timestamp()),
        "survey_id": str(survey_id),
    }
    raws = raw_sendgrid_events(json.dumps([event]).encode())
    [handled] = responses.ingest_webhooks(db.factory, config, raws, now=now)
    assert handled.result == "customer erased"
    with db.session() as s:
        assert len(s.scalars(select(ConsentRecord)).all()) == consents
        assert s.get(Survey, survey_id).state == "opted_out"  # still counted as a refusal
        row = s.scalar(select(InboundEvent).where(InboundEvent.source == "sendgrid"))
        assert (row.payload, row.survey_id) == (None, None)


# --- data stored before pseudonyms were keyed ------------------------------------------------


def _legacy_rows(db: Database) -> dict[str, int]:
    """What 0002 left behind: clear customer ids, an unsalted tombstone, JSON nulls."""
    gone_sha = hashlib.sha256(b"c-gone").hexdigest()
    with db.engine.begin() as conn:
        ids = {}
        for name, erased_when in (("c-live", None), ("erased:1f2e", NOON)):
            ids[name] = conn.execute(
                insert(Customer)
                .values(
                    external_id=name,
                    email="live@example.org" if erased_when is None else None,
                    email_status="valid",
                    phone_status="missing",
                    erased_at=erased_when,
                    created_at=NOON,
                    updated_at=NOON,
                )
                .returning(Customer.id)
            ).scalar_one()
            order = conn.execute(
                insert(Order)
                .values(external_id=f"O-{name}", customer_id=ids[name], created_at=NOON)
                .returning(Order.id)
            ).scalar_one()
            ids[f"survey:{name}"] = conn.execute(
                insert(Survey)
                .values(
                    order_id=order,
                    customer_id=ids[name],
                    channel="email",
                    state="delivered",
                    state_changed_at=NOON,
                    planned_at=NOON,
                    timezone="Europe/Berlin",
                    attempts=1,
                    reminders_sent=0,
                )
                .returning(Survey.id)
            ).scalar_one()
        conn.execute(insert(ErasedSubject).values(subject_hash=gone_sha, erased_at=NOON))
        rows = {
            "gone-shop": dict(source="shop", subject_key="c-gone", fingerprint="f1"),
            "live-shop": dict(source="shop", subject_key="c-live", fingerprint="f2"),
            "live-sms": dict(
                source="twilio_inbound",
                subject_key="c-live",
                payload={"form": {"From": "+40721000999", "Body": "hi"}},
                handled_at=NOON,
            ),
            "gone-email": dict(
                source="sendgrid",
                survey_id=ids["survey:erased:1f2e"],
                payload={"email": "gone@example.org"},
                handled_at=NOON,
            ),
            "live-email": dict(
                source="sendgrid",
                subject_key="c-live",
                survey_id=ids["survey:c-live"],
                payload={"email": "live@example.org"},
                handled_at=NOON,
            ),
            "pending": dict(source="sendgrid", payload={"email": "someone@example.org"}),
            "pruned": dict(source="twilio_status", payload=JSON.NULL, handled_at=NOON),
        }
        for external_id, values in rows.items():
            ids[external_id] = conn.execute(
                insert(InboundEvent)
                .values(external_id=external_id, event_type="x", received_at=NOON, **values)
                .returning(InboundEvent.id)
            ).scalar_one()
        for key, payload in (
            (
                "c-gone",
                {
                    "type": "purchase.completed",
                    "event_id": "e-9",
                    "customer": {"id": "c-gone", "email": "gone@example.org"},
                },
            ),
            (
                "c-live",
                {"type": "purchase.completed", "event_id": "e-8", "customer": {"id": "c-live"}},
            ),
        ):
            ids[f"letter:{key}"] = conn.execute(
                insert(DeadLetter)
                .values(
                    source="queue",
                    event_id=payload["event_id"],
                    subject_key=key,
                    payload=json.dumps(payload),
                    error="bad",
                    created_at=NOON,
                )
                .returning(DeadLetter.id)
            ).scalar_one()
    return ids


def test_migration_0003_leaves_no_clear_id_and_keeps_tombstones_working(
    db: Database, config: OperatorConfig, pseudonymiser: Pseudonymiser
):
    downgrade(db.engine, "0002")
    try:
        ids = _legacy_rows(db)
    finally:
        upgrade(db.engine)
    with db.session() as s:
        ledger = {r.external_id: r for r in s.scalars(select(InboundEvent))}
        assert {r.subject_key for r in ledger.values()} == {None}
        assert (ledger["gone-shop"].fingerprint, ledger["live-shop"].fingerprint) == (None, "f2")
        assert ledger["live-sms"].payload is None  # applied, tied to no survey
        assert (ledger["gone-email"].payload, ledger["gone-email"].survey_id) == (None, None)
        assert ledger["live-email"].payload == {"email": "live@example.org"}
        assert ledger["pending"].payload == {"email": "someone@example.org"}
        assert (
            ledger["pruned"].id
            in s.scalars(select(InboundEvent.id).where(InboundEvent.payload.is_(None))).all()
        )
        gone, live = (
            s.get(DeadLetter, ids["letter:c-gone"]),
            s.get(DeadLetter, ids["letter:c-live"]),
        )
        assert (gone.subject_key, live.subject_key) == (None, None)
        assert json.loads(gone.payload) == {"type": "purchase.completed", "event_id": "e-9"}
        assert json.loads(live.payload)["customer"] == {"id": "c-live"}
        surveys = {sid: tz for sid, tz in s.execute(select(Survey.id, Survey.timezone))}
        assert surveys == {
            ids["survey:erased:1f2e"]: None,
            ids["survey:c-live"]: "Europe/Berlin",
        }
        [tombstone] = s.scalars(select(ErasedSubject.subject_hash)).all()
        assert tombstone == legacy_tombstone("c-gone")
    # The marked tombstone still refuses a late event about the erased customer.
    late = purchase("L-1", customer_id="c-gone", at="2026-11-19T10:00:00Z")
    assert ingest_event(db.factory, late, config, NOON).outcome == "customer erased"
    # And erasure still finds the live customer's letter and the webhook tied to their survey.
    ingest_event(db.factory, erased("c-live", at=ERASED_AT), config, NOON + timedelta(2))
    with db.session() as s:
        assert s.get(DeadLetter, ids["letter:c-live"]) is None
        assert s.get(InboundEvent, ids["live-email"]).payload is None


def test_the_scheduler_rekeys_unkeyed_tombstones_once_it_has_the_key(
    db: Database, config: OperatorConfig, runtime_for, pseudonymiser: Pseudonymiser
):
    with db.session() as s, s.begin():
        s.add(ErasedSubject(subject_hash=legacy_tombstone("c-gone"), erased_at=NOON))
        s.add(ErasedSubject(subject_hash=legacy_tombstone("c-twice"), erased_at=NOON))
        # Erased again since, under the keyed scheme: one tombstone stays, the later date.
        s.add(
            ErasedSubject(
                subject_hash=pseudonymiser.subject("c-twice"), erased_at=NOON - timedelta(days=1)
            )
        )
    wiring.scheduler(
        runtime_for(db, NPS_SECRET_KEY=""), enqueue_send=_no_queue, enqueue_reminder=_no_queue
    )
    with db.session() as s:
        assert len(s.scalars(select(ErasedSubject)).all()) == 3  # no key, nothing touched
    runtime = runtime_for(db)
    wiring.scheduler(runtime, enqueue_send=_no_queue, enqueue_reminder=_no_queue)
    assert runtime.rekeyed
    with db.session() as s:
        rows = dict(s.execute(select(ErasedSubject.subject_hash, ErasedSubject.erased_at)).all())
    assert rows == {
        pseudonymiser.subject("c-gone"): NOON,
        pseudonymiser.subject("c-twice"): NOON,
    }
    assert rekey_legacy_pseudonyms(runtime.factory, runtime.pseudonymiser) == 0
    late = purchase("L-2", customer_id="c-gone", at="2026-11-19T10:00:00Z")
    assert ingest_event(db.factory, late, config, NOON).outcome == "customer erased"


def _no_queue(*_: object) -> None:
    """Stands for the queue in a scheduler built only for what building it does."""
