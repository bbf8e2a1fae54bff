"""Status callbacks of concurrent requests share one transaction: each request still gets its
own answer, each callback is stored once and applied once, a failed group answers 500 to every
request of it and leaves nothing, a forged one is refused with nothing stored, and an erasure
still reaches what a group stored."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import select, text

from ingest.subjects import erase_customer
from models import InboundEvent
from tests.conftest import Database
from tests.dispatch.test_responses import PHONE, seed_survey, survey_of
from tests.web.test_twilio_hooks import (
    BASE,
    TOKEN,
    message_status,
    replay,
    rows,
    signature,
    status_params,
)
from web.app import create_app

Request = tuple[str, dict[str, str], str]  # path, form, signature


def signed(survey_id: int, sid: str, status: str, token: str = TOKEN) -> Request:
    path = f"/webhooks/twilio/status?survey_id={survey_id}"
    params = status_params(sid, status)
    return path, params, signature(BASE + path, params, token=token)


async def _post_all(app: object, requests: Sequence[Request]) -> list[int]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

        async def one(path: str, params: dict[str, str], sig: str) -> int:
            response = await client.post(
                path,
                content=urlencode(params).encode(),
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": sig,
                },
            )
            return response.status_code

        return list(await asyncio.gather(*(one(*request) for request in requests)))


def post_together(app: object, requests: Sequence[Request]) -> list[int]:
    """Every request at once on one event loop; their status codes, in order."""
    return asyncio.run(_post_all(app, requests))


@pytest.fixture
def app(db: Database, runtime_for):
    return create_app(runtime_for(db, TWILIO_AUTH_TOKEN=TOKEN))


def stored(db: Database) -> dict[str, tuple[str | None, int | None, bool]]:
    """external id -> (result, survey id, applied) of every stored row."""
    with db.session() as s:
        found = s.execute(
            select(
                InboundEvent.external_id,
                InboundEvent.result,
                InboundEvent.survey_id,
                InboundEvent.handled_at,
            )
        )
        return {r.external_id: (r.result, r.survey_id, r.handled_at is not None) for r in found}


def test_concurrent_callbacks_are_each_stored_and_applied_once(app, db: Database):
    surveys = [seed_survey(db, state="sent") for _ in range(8)]
    sids = {sid: str(survey_of(db, sid).provider_message_id) for sid in surveys}
    requests = [signed(sid, msg, status) for sid, msg in sids.items() for status in ("sent",)]
    requests += [signed(sid, msg, "delivered") for sid, msg in sids.items()]
    requests += [signed(sid, msg, "queued") for sid, msg in sids.items()]  # ranked below sent
    copies = requests[:8] + requests[8:12]  # Twilio's retries, arriving with the originals
    assert post_together(app, requests + copies) == [204] * (len(requests) + len(copies))
    rows_now = stored(db)
    assert len(rows_now) == len(requests)  # one row per provider id, the copies none
    applied = {k: v for k, v in rows_now.items() if v[2]}
    waiting = {k: v for k, v in rows_now.items() if not v[2]}
    # "sent" and "queued" only advance the message: applied at once, tied to their survey.
    assert sorted(v[0] or "" for v in applied.values()) == sorted(
        ["message sent"] * 8 + ["message queued"] * 8
    )
    assert {v[1] for v in applied.values()} == set(surveys)
    assert len(waiting) == 8  # "delivered" moves the survey: left for the replay
    for msg in sids.values():
        assert message_status(db, msg) == "sent"  # queued never took it back
    assert replay(db).applied == 8
    assert all(survey_of(db, sid).state == "delivered" for sid in surveys)
    # Sent again after all that: duplicates, no second effect anywhere.
    assert post_together(app, requests) == [204] * len(requests)
    assert stored(db).keys() == rows_now.keys() and replay(db).applied == 0
    assert all(message_status(db, msg) == "delivered" for msg in sids.values())


def test_a_forged_callback_among_genuine_ones_is_refused_and_stores_nothing(app, db: Database):
    genuine = seed_survey(db, state="sent")
    forged = seed_survey(db, state="sent")
    genuine_msg = str(survey_of(db, genuine).provider_message_id)
    forged_msg = str(survey_of(db, forged).provider_message_id)
    requests = [
        signed(genuine, genuine_msg, "sent"),
        signed(forged, forged_msg, "sent", token="f" * 32),
        signed(genuine, genuine_msg, "delivered"),
        signed(forged, forged_msg, "delivered", token="f" * 32),
    ]
    assert post_together(app, requests) == [204, 403, 204, 403]
    assert len(stored(db)) == 2
    assert message_status(db, forged_msg) == "accepted" and survey_of(db, forged).state == "sent"
    assert message_status(db, genuine_msg) == "sent"


def _refuse_inserts(db: Database) -> None:
    """Make the database refuse every new raw row, as a full disk or a lost table would."""
    with db.engine.begin() as conn:
        if db.engine.dialect.name == "postgresql":
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_row() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'refused'; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON inbound_events "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_row()"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT ON inbound_events "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )


def _accept_inserts(db: Database) -> None:
    with db.engine.begin() as conn:
        conn.execute(text("DROP TRIGGER refuse" + (" ON inbound_events" if _pg(db) else "")))
        if _pg(db):
            conn.execute(text("DROP FUNCTION refuse_row()"))


def _pg(db: Database) -> bool:
    return db.engine.dialect.name == "postgresql"


def test_a_failed_group_answers_500_to_each_request_and_keeps_nothing_half(app, db: Database):
    surveys = [seed_survey(db, state="sent") for _ in range(6)]
    sids = {sid: str(survey_of(db, sid).provider_message_id) for sid in surveys}
    requests = [signed(sid, msg, status) for sid, msg in sids.items() for status in ("sent",)]
    requests += [signed(sid, msg, "delivered") for sid, msg in sids.items()]
    _refuse_inserts(db)
    try:
        answers = post_together(app, requests)
    finally:
        _accept_inserts(db)
    # An error status Twilio retries, for every request; nothing stored and no message moved
    # (the message updates were in the same transaction as the refused rows).
    assert answers == [500] * len(requests)
    assert rows(db, InboundEvent) == 0
    assert all(message_status(db, msg) == "accepted" for msg in sids.values())
    # Twilio's retries then go through, applied once.
    assert post_together(app, requests) == [204] * len(requests)
    assert len(stored(db)) == len(requests)
    assert all(message_status(db, msg) == "sent" for msg in sids.values())


def test_an_erasure_empties_what_a_group_stored_about_the_customer(
    app, db: Database, config, frozen_clock
):
    surveys = [seed_survey(db, state="sent", customer="c-erased") for _ in range(3)]
    sids = {sid: str(survey_of(db, sid).provider_message_id) for sid in surveys}
    requests = [signed(sid, msg, "sent") for sid, msg in sids.items()]  # applied, tied
    requests += [signed(sid, msg, "delivered") for sid, msg in sids.items()]  # stored, untied
    assert post_together(app, requests) == [204] * len(requests)
    with db.session() as s:
        ids = list(s.scalars(select(InboundEvent.id)))
        assert all(PHONE in str(p) for p in s.scalars(select(InboundEvent.payload)))
    assert len(ids) == len(requests)
    erase_customer(db.factory, "c-erased", config)
    with db.session() as s:
        payloads = list(s.scalars(select(InboundEvent.payload).where(InboundEvent.id.in_(ids))))
    assert len(payloads) == len(requests)
    assert not any(PHONE in str(p) for p in payloads if p is not None)


def test_a_closed_database_leaves_no_status_committer_behind() -> None:
    """The committer of a session factory goes with the factory (tests and reloads make many)."""
    import gc

    from models.session import make_engine, make_session_factory
    from web import webhooks

    engine = make_engine("sqlite://")
    factory = make_session_factory(engine)
    webhooks._status_groups(factory)
    assert factory in webhooks._STATUS_GROUPS
    before = len(webhooks._STATUS_GROUPS)
    del factory
    gc.collect()
    assert len(webhooks._STATUS_GROUPS) == before - 1
    engine.dispose()
