"""The send path's own state writes (``dispatch.sending.common.move_one`` and the one-statement
claim and record) follow ``models.move``: the same transition history rows, and no move the
lifecycle does not list."""

from __future__ import annotations

from sqlalchemy import select

from dispatch.sending.common import move_one
from models import Survey, SurveyState, SurveyTransition, move
from tests.conftest import Database
from tests.dispatch.test_send_statements import queued_surveys
from tests.dispatch.test_sending import NOON

S = SurveyState


def history(db: Database, survey_id: int) -> list[tuple[str, str, object, str | None]]:
    with db.session() as s:
        return [
            (t.from_state, t.to_state, t.at, t.reason)
            for t in s.scalars(
                select(SurveyTransition)
                .where(SurveyTransition.survey_id == survey_id)
                .order_by(SurveyTransition.id)
            )
        ]


def test_move_one_writes_the_history_row_move_writes(db, config):
    first, second = queued_surveys(db, config, 2)
    with db.session() as s, s.begin():
        assert move(s, first, S.scheduled, reason="why", only_from=[S.queued], now=NOON)
        assert move_one(s, second, S.queued, S.scheduled, now=NOON, reason="why")
    assert history(db, first)[-1] == history(db, second)[-1] == ("queued", "scheduled", NOON, "why")


def test_move_one_refuses_a_move_the_lifecycle_does_not_list(db, config):
    [survey_id] = queued_surveys(db, config, 1)
    before = history(db, survey_id)
    with db.session() as s, s.begin():
        # queued -> sent skips the claim: not in the lifecycle.
        assert not move_one(s, survey_id, S.queued, S.sent, now=NOON, reason="skip")
    with db.session() as s:
        assert s.get(Survey, survey_id).state == S.queued
    assert history(db, survey_id) == before
