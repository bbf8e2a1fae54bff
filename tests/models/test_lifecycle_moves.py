"""Moving many surveys at once follows the one lifecycle table: an illegal move is refused
before anything is written, a row no longer in the state its caller read moves nowhere, and
every move that happened leaves its transition."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from models import Survey, SurveyTransition
from models.lifecycle import TRANSITIONS, IllegalMove, SurveyState, require_moves
from models.surveys import Move, MoveConflict, move_each, move_rows
from tests.conftest import NOW, Database
from tests.seeding import seed_due_surveys

S = SurveyState


def test_require_moves_follows_the_transition_table():
    require_moves((source, target) for source, targets in TRANSITIONS.items() for target in targets)
    with pytest.raises(IllegalMove, match="from sent to scheduled"):
        require_moves([(S.scheduled, S.queued), (S.sent, S.scheduled)])


def test_move_each_writes_nothing_when_one_move_is_illegal(db: Database):
    a, b = seed_due_surveys(db, 2, NOW)
    with db.session() as s, s.begin(), pytest.raises(IllegalMove):
        move_each(s, [Move(a, S.scheduled, S.queued), Move(b, S.scheduled, S.sent)], now=NOW)
    with db.session() as s:
        assert Counter(s.scalars(select(Survey.state))) == Counter({"scheduled": 2})
        assert s.scalar(select(SurveyTransition.id)) is None


def test_move_each_moves_each_to_its_target_and_skips_rows_that_moved_meanwhile(db: Database):
    a, b, c, d = seed_due_surveys(db, 4, NOW)
    with db.session() as s, s.begin():
        s.execute(update(Survey).where(Survey.id == d).values(state="withdrawn"))
    later = NOW + timedelta(hours=9)
    with db.session() as s, s.begin():
        moved = move_each(
            s,
            [
                Move(a, S.scheduled, S.queued, None, (("queued_at", NOW),)),
                Move(b, S.scheduled, S.queued, None, (("queued_at", NOW),)),
                Move(c, S.scheduled, S.scheduled, "quiet hours", (("due_at", later),)),
                Move(d, S.scheduled, S.queued, None, (("queued_at", NOW),)),  # no longer scheduled
            ],
            now=NOW,
        )
    assert sorted(moved) == [a, b, c]
    with db.session() as s:
        rows = {r.id: r for r in s.scalars(select(Survey))}
        history = sorted(
            s.execute(
                select(
                    SurveyTransition.survey_id,
                    SurveyTransition.from_state,
                    SurveyTransition.to_state,
                    SurveyTransition.reason,
                    SurveyTransition.at,
                )
            ).all()
        )
    assert [rows[i].state for i in (a, b, c, d)] == ["queued", "queued", "scheduled", "withdrawn"]
    assert rows[a].queued_at == NOW and rows[c].due_at == later and rows[c].queued_at is None
    assert history == [
        (a, "scheduled", "queued", None, NOW),
        (b, "scheduled", "queued", None, NOW),
        (c, "scheduled", "scheduled", "quiet hours", NOW),
    ]


def test_move_rows_applies_each_surveys_moves_in_order_with_its_own_values(db: Database):
    a, b = seed_due_surveys(db, 2, NOW)
    with db.session() as s, s.begin():
        s.execute(update(Survey).where(Survey.id == a).values(state="sending"))
        s.execute(update(Survey).where(Survey.id == b).values(state="sent"))
    first, second = NOW + timedelta(minutes=1), NOW + timedelta(minutes=2)
    with db.session() as s, s.begin():
        moved = move_rows(
            s,
            [
                # b's only move is of the kind of a's second: one statement per kind of move
                # would move a from sent before it is sent. Rounds keep each survey's order.
                Move(b, S.sent, S.delivered, "b delivered", (("delivered_at", second),)),
                Move(a, S.sending, S.sent, "a sent", (("sent_at", first),)),
                Move(a, S.sent, S.delivered, "a delivered", (("delivered_at", first),)),
            ],
            now=NOW,
        )
    assert sorted(moved) == [a, b]
    with db.session() as s:
        rows = {r.id: r for r in s.scalars(select(Survey))}
        history = s.execute(
            select(
                SurveyTransition.survey_id,
                SurveyTransition.from_state,
                SurveyTransition.to_state,
                SurveyTransition.reason,
            ).order_by(SurveyTransition.id)
        ).all()
    assert [(rows[i].state, rows[i].sent_at, rows[i].delivered_at) for i in (a, b)] == [
        ("delivered", first, first),
        ("delivered", None, second),
    ]
    assert [h for h in history if h[0] == a] == [
        (a, "sending", "sent", "a sent"),
        (a, "sent", "delivered", "a delivered"),
    ]
    assert [h for h in history if h[0] == b] == [(b, "sent", "delivered", "b delivered")]


def test_move_rows_refuses_a_row_not_in_its_source_state(db: Database):
    a, b = seed_due_surveys(db, 2, NOW)
    # The error leaves the transaction, which undoes the move that did match.
    with (
        pytest.raises(MoveConflict, match="1 of 1 surveys were no longer queued"),
        db.session() as s,
        s.begin(),
    ):
        move_rows(s, [Move(a, S.scheduled, S.queued), Move(b, S.queued, S.sending)], now=NOW)
    with pytest.raises(IllegalMove), db.session() as s, s.begin():
        move_rows(s, [Move(a, S.scheduled, S.sent)], now=NOW)
    with db.session() as s:
        assert Counter(s.scalars(select(Survey.state))) == Counter({"scheduled": 2})
