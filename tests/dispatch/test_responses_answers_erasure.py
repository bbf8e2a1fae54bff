"""The answer page and the unsubscribe link against an erasure of the same customer, at once.

The erasure holds the customer's row ``FOR UPDATE`` and then writes the customer's surveys. An
answer or an unsubscribe that locked the survey first and the customer second would wait for
the erasure while the erasure waits for it: PostgreSQL breaks such a cycle by aborting one of
the two (the respondent's post ending in an error page, or the erasure rolled back and run
again). They take the customer first, as the erasure does, so one simply waits for the other.

Each test makes the erasure slow after it took the customer (its ledger update sleeps in a row
trigger), posts while it sleeps, and checks that both finish without a deadlock and that the
erasure's promise holds: nothing personal written by the post survives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import select, text

from config import OperatorConfig
from dispatch import responses
from ingest.service import IngestResult, ingest_event
from models import Answer, ConsentRecord, Customer, Survey, utcnow
from tests.conftest import Database
from tests.dispatch.test_responses import seed_survey
from tests.factories import erased
from tests.faults import slowed

# The erasure's own ledger row being emptied (``forget_subject``): after the customer is locked,
# before the surveys are written.
_ERASURE_FORGETS = "NEW.event_type = 'customer.erased' AND NEW.payload IS NULL"


def _beside_a_slow_erasure(
    db: Database, config: OperatorConfig, post: Callable[[], Any]
) -> tuple[list[IngestResult], Any]:
    """Runs the erasure of ``c-1`` in a thread, slowed while it holds the customer, and
    ``post`` once it holds it; returns the erasure's results and what ``post`` returned."""
    results: list[IngestResult] = []
    failures: list[BaseException] = []

    def erase() -> None:
        try:
            results.append(ingest_event(db.factory, erased("c-1", at=utcnow()), config))
        except BaseException as exc:
            failures.append(exc)

    with slowed(db, "inbound_events", _ERASURE_FORGETS, 2):
        erasing = threading.Thread(target=erase)
        erasing.start()
        _until_sleeping_in_the_trigger(db)
        posted = post()
        erasing.join()
    assert failures == []
    return results, posted


def _until_sleeping_in_the_trigger(db: Database) -> None:
    """Waits until the erasure sleeps in its trigger, holding the customer: the post then
    always meets it, however slow the machine."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            sleeping = conn.scalar(
                text("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")
            )
        if sleeping:
            return
        time.sleep(0.02)
    raise AssertionError("the erasure never reached its slowed update")


def _in_a_transaction(db: Database, work: Callable[[Any], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with db.session() as s, s.begin():
            return work(s)

    return run


def test_a_comment_posted_during_an_erasure_waits_and_is_not_kept(pg_db: Database, config, caplog):
    db = pg_db
    survey_id = seed_survey(db, state="answered", score=9, answered_at=utcnow())
    results, answer = _beside_a_slow_erasure(
        db,
        config,
        _in_a_transaction(
            db, lambda s: responses.record_web_comment(s, survey_id, "Ana here", utcnow())
        ),
    )
    assert [r.outcome for r in results] == ["erased"]
    assert "deadlock" not in caplog.text.lower()
    # The post came after the erasure: taken, but free text about an erased customer is not kept.
    assert answer.status == "recorded"
    with db.session() as s:
        survey = s.get(Survey, survey_id)
        assert survey is not None and survey.comment is None and survey.score == 9
        assert list(s.scalars(select(Answer.comment).where(Answer.comment.is_not(None)))) == []


def test_a_score_and_comment_posted_during_an_erasure_keep_the_score_only(
    pg_db: Database, config, caplog
):
    db = pg_db
    survey_id = seed_survey(db, state="delivered")

    def answer(s: Any) -> Any:
        now = utcnow()
        responses.record_web_score(s, survey_id, 3, config, now)
        return responses.record_web_comment(s, survey_id, "call me, Ana", now)

    results, outcome = _beside_a_slow_erasure(db, config, _in_a_transaction(db, answer))
    assert [r.outcome for r in results] == ["erased"]
    assert "deadlock" not in caplog.text.lower()
    assert outcome.status == "recorded"
    with db.session() as s:
        survey = s.get(Survey, survey_id)
        assert survey is not None and survey.score == 3 and survey.comment is None
        assert list(s.execute(select(Answer.score, Answer.comment))) == [(3, None)]


def test_an_unsubscribe_during_an_erasure_waits_and_keeps_no_evidence_of_them(
    pg_db: Database, config, caplog
):
    db = pg_db
    survey_id = seed_survey(db, channel="email", state="delivered")
    results, outcome = _beside_a_slow_erasure(
        db,
        config,
        _in_a_transaction(
            db, lambda s: responses.unsubscribe_email(s, survey_id, config, utcnow())
        ),
    )
    assert [r.outcome for r in results] == ["erased"]
    assert "deadlock" not in caplog.text.lower()
    assert outcome in ("unsubscribed", "already unsubscribed")
    with db.session() as s:
        customer = s.scalar(select(Customer))
        assert customer is not None and customer.erased_at is not None
        assert customer.email is None and customer.first_name is None
        sources = set(s.scalars(select(ConsentRecord.source)))
        refs = set(s.scalars(select(ConsentRecord.evidence_ref)))
    # Consent evidence written after the erasure names no one either: the erasure emptied what
    # it found, and what came later was written about an erased customer.
    assert refs <= {None, f"survey:{survey_id}"}
    assert "checkout" not in sources
