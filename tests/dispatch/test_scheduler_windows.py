"""Closing the response window: every survey ends in one final state, `partial` included.

An answered survey (a score, no follow-up yet) whose window closes ends `partial`: still an
answer with its score in the NPS, an AAPOR partial, shown by the metrics, and closed to late
replies like any survey whose window has passed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from dispatch import responses
from dispatch.scheduler import Scheduler
from dispatch.tick_report import TickReport
from models import Answer, Survey, SurveyTransition
from models.lifecycle import (
    DISPOSITION_OF,
    FINAL_STATES,
    INVITED_STATES,
    OPEN_STATES,
    TRANSITIONS,
    Disposition,
    SurveyState,
)
from reports.build import build_report
from tests.conftest import NOW, Database
from tests.dispatch.test_responses import inbound, seed_survey, survey_of
from web.metrics import DatabaseCollector

S = SurveyState
PASS = NOW + timedelta(hours=1)
CLOSED = PASS - timedelta(minutes=5)
OPEN = PASS + timedelta(days=3)


def tick(db: Database, config, **kwargs) -> TickReport:
    return Scheduler(db.factory, lambda _i: None, **kwargs).tick(config, PASS)


def answered(db: Database, score: int, closes_at, **values) -> int:
    return seed_survey(
        db,
        channel="email",
        state="answered",
        now=NOW,
        score=score,
        answered_at=NOW - timedelta(days=2),
        closes_at=closes_at,
        **values,
    )


def test_the_state_machine_has_a_final_state_for_every_closed_window():
    assert S.partial in FINAL_STATES and S.answered not in FINAL_STATES
    assert S.partial in TRANSITIONS[S.answered] and TRANSITIONS[S.partial] == frozenset()
    assert DISPOSITION_OF[S.partial] is Disposition.P
    # Every invited state that is not final is one the window-closing step moves.
    for state in INVITED_STATES - FINAL_STATES:
        targets = TRANSITIONS[state] & FINAL_STATES
        assert (S.no_response in targets) or (S.partial in targets), state


def test_an_answered_survey_ends_partial_and_counts_as_a_partial_answer(db: Database, config):
    partial = answered(db, 9, CLOSED)
    still_open = answered(db, 3, OPEN)
    completed = seed_survey(
        db, channel="email", state="completed", now=NOW, score=10, comment="ok", closes_at=CLOSED
    )
    silent = seed_survey(db, channel="email", state="delivered", now=NOW, closes_at=CLOSED)

    report = tick(db, config)

    assert (report.closed, report.partials) == (2, 1)
    closed = survey_of(db, partial)
    assert (closed.state, closed.score) == ("partial", 9)
    assert closed.final_reason == "response window closed before the follow-up"
    assert [survey_of(db, i).state for i in (still_open, completed, silent)] == [
        "answered",
        "completed",
        "no_response",
    ]
    with db.session() as s:
        moves = s.execute(
            select(
                SurveyTransition.from_state, SurveyTransition.to_state, SurveyTransition.at
            ).where(SurveyTransition.survey_id == partial)
        ).all()
    assert [tuple(m) for m in moves] == [("answered", "partial", PASS)]

    built = build_report(db.factory, config, now=PASS)
    assert built["n_answered"] == 3
    assert built["counts"] == {"promoters": 2, "passives": 0, "detractors": 1, "n": 3}
    assert built["nps"] == pytest.approx(100 / 3)
    assert built["dispositions"] == {
        "I": 1,
        "P": 2,  # the partial and the answered one still inside its window
        "R": 0,
        "NC": 1,
        "O": 0,
        "UH": 0,
        "UO": 0,
        "NE": 0,
        "pending": 0,
    }
    assert built["coverage"]["answered"] == 3
    assert built["response_rate"]["count"] == 3 and built["response_rate"]["nobs"] == 4

    gauge = {m.name: m for m in DatabaseCollector(db.factory).collect()}["nps_surveys"]
    by_state = {sample.labels["state"]: sample.value for sample in gauge.samples}
    assert by_state["partial"] == 1 and by_state["answered"] == 1
    assert set(by_state) == {state.value for state in SurveyState}  # zeros included


def test_every_survey_past_its_window_is_final_after_a_tick(db: Database, config):
    """A mix of every state a window applies to, past and inside it; more closable surveys
    than one closing batch takes, so the pass must go on until none is left."""
    with_window = [
        "sent",
        "delivered",
        "answered",
        "completed",
        "partial",
        "undeliverable",
        "opted_out",
        "no_response",
        "send_unknown",
    ]
    for state in with_window:
        for closes_at in (CLOSED, OPEN):
            score = 8 if state in ("answered", "completed", "partial") else None
            seed_survey(db, channel="email", state=state, now=NOW, closes_at=closes_at, score=score)
    for i in range(12):
        seed_survey(
            db, channel="email", state="sent", now=NOW, closes_at=CLOSED - timedelta(days=i)
        )
        answered(db, 6, CLOSED - timedelta(hours=i))
    with db.session() as s:
        before = {sid: state for sid, state in s.execute(select(Survey.id, Survey.state))}

    tick(db, config, batch_size=1)  # closing batches of 10

    with db.session() as s:
        rows = [
            (sid, state, closes_at)
            for sid, state, closes_at in s.execute(
                select(Survey.id, Survey.state, Survey.closes_at)
            )
            if closes_at is not None
        ]
    past = [(sid, state) for sid, state, closes_at in rows if closes_at <= PASS]
    assert len(past) == len(with_window) + 24
    assert [(sid, state) for sid, state in past if S(state) not in FINAL_STATES] == []
    for sid, state, closes_at in rows:
        if closes_at > PASS:
            assert state == before[sid]  # inside the window: untouched
        elif before[sid] in {open_state.value for open_state in OPEN_STATES}:
            assert state == "no_response"
        elif before[sid] == "answered":
            assert state == "partial"
        else:
            assert state == before[sid]  # already final


def test_nothing_more_is_taken_once_the_window_closed(db: Database, config):
    """A late score or follow-up, on the web or by SMS, is refused as for any closed survey:
    the follow-up cannot complete a partial survey."""
    web = answered(db, 7, CLOSED, customer="c-web", phone="+40721000301")
    text = seed_survey(
        db,
        channel="sms",
        state="answered",
        now=NOW,
        customer="c-sms",
        phone="+40721000302",
        score=7,
        closes_at=CLOSED,
    )
    # Before the pass: the window has closed but the survey is still `answered`.
    with db.session() as s, s.begin():
        assert responses.record_web_comment(s, web, "fast delivery", PASS).status == "closed"
    tick(db, config)
    assert survey_of(db, web).state == survey_of(db, text).state == "partial"

    with db.session() as s, s.begin():
        assert responses.record_web_score(s, web, 10, config, PASS).status == "closed"
        assert responses.record_web_comment(s, web, "fast delivery", PASS).status == "closed"
    for body in ("great service", "10"):
        [handled] = responses.ingest_webhooks(
            db.factory, config, [inbound(body, sender="+40721000302")], now=PASS
        )
        assert (handled.status, handled.result, handled.reply) == (
            "applied",
            "no open survey",
            None,
        )
    for sid in (web, text):
        survey = survey_of(db, sid)
        assert (survey.state, survey.score, survey.comment) == ("partial", 7, None)
        assert survey.final_reason == "response window closed before the follow-up"
    with db.session() as s:
        assert s.scalars(select(Answer).where(Answer.survey_id.in_([web, text]))).all() == []
