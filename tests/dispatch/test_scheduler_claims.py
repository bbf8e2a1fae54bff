"""The scheduler's claim and re-planning, by their cost in statements and by what they touch.

A batch of due surveys is claimed, re-checked and moved with a fixed number of statements,
however many surveys it holds; re-planning after a config edit touches only the surveys planned
under another version, once; and ``queued_at``, the transition time and the lateness metric
record the moment each batch was claimed and enqueued, not the start of the pass.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import time_machine
from sqlalchemy import event, select, update

from dispatch.scheduler import Scheduler
from logs.metrics import SCHEDULER_LATENESS
from models import Survey, SurveyTransition
from tests.conftest import NOW, Database
from tests.seeding import seed_due_surveys

LATER = NOW + timedelta(hours=1)


@contextmanager
def counting(db: Database) -> Iterator[list[str]]:
    """Every SQL statement the engine runs meanwhile (an executemany counts once)."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(db.engine, "before_cursor_execute", record)


def due_now(db: Database, ids: Sequence[int]) -> None:
    with db.session() as s, s.begin():
        s.execute(
            update(Survey).where(Survey.id.in_(ids)).values(due_at=NOW - timedelta(minutes=1))
        )


def test_a_claim_costs_the_same_statements_for_3_or_60_surveys(db: Database, config):
    ids = seed_due_surveys(db, 63, LATER, config_version=config.schedule_version)
    due_now(db, ids[:3])
    scheduler = Scheduler(
        db.factory, lambda _i: None, batch_size=100, stuck_after=timedelta(days=1)
    )
    with counting(db) as few:
        assert scheduler.tick(config, NOW).queued == 3
    with counting(db) as many:
        assert scheduler.tick(config, LATER).queued == 60
    assert len(few) == len(many), (few, many)
    # The whole batch is recorded by one INSERT of transitions.
    assert sum("INSERT INTO survey_transitions" in s for s in many) == 1
    with db.session() as s:
        assert Counter(s.scalars(select(Survey.state))) == Counter({"queued": 63})
        assert (
            s.scalar(select(SurveyTransition.id).where(SurveyTransition.to_state != "queued"))
            is None
        )


def test_a_stopped_survey_costs_no_more_statements_than_a_queued_one(db: Database, config):
    """Withdrawals and quiet-hours deferrals in a batch add one UPDATE per kind, not per survey."""
    from models import Order

    ids = seed_due_surveys(db, 40, LATER, config_version=config.schedule_version)
    with db.session() as s, s.begin():
        s.execute(
            update(Order)
            .where(Order.id.in_(select(Survey.order_id).where(Survey.id.in_(ids[:20]))))
            .values(cancelled_at=NOW - timedelta(days=1), cancel_kind="cancelled")
        )
    scheduler = Scheduler(
        db.factory, lambda _i: None, batch_size=100, stuck_after=timedelta(days=1)
    )
    due_now(db, ids[:2])
    with counting(db) as few:
        report = scheduler.tick(config, NOW)
    assert report.stopped == 2 and report.queued == 0
    with counting(db) as many:
        report = scheduler.tick(config, LATER)
    assert report.stopped == 18 and report.queued == 20
    assert len(many) == len(few) + 1  # the queued group's UPDATE
    with db.session() as s:
        reasons = Counter(
            s.execute(select(Survey.state, Survey.final_reason).where(Survey.id.in_(ids[:20])))
        )
        history = Counter(
            s.execute(
                select(SurveyTransition.from_state, SurveyTransition.to_state).where(
                    SurveyTransition.survey_id.in_(ids[:20])
                )
            )
        )
    assert reasons == Counter({("withdrawn", "order cancelled"): 20})
    assert history == Counter({("scheduled", "withdrawn"): 20})


def test_replan_touches_only_surveys_of_another_version_and_only_once(db: Database, config):
    ids = seed_due_surveys(db, 8, NOW + timedelta(days=2), config_version=config.schedule_version)
    stale = ids[:3]
    with db.session() as s, s.begin():
        s.execute(update(Survey).where(Survey.id.in_(stale)).values(config_version="0ld-version"))
    scheduler = Scheduler(db.factory, lambda _i: None)
    assert scheduler.tick(config, NOW).replanned == 3
    with db.session() as s:
        replanned = set(
            s.scalars(
                select(SurveyTransition.survey_id).where(SurveyTransition.reason == "re-planned")
            )
        )
        versions = Counter(s.scalars(select(Survey.config_version)))
    assert replanned == set(stale)
    assert versions == Counter({config.schedule_version: 8})
    with counting(db) as second:
        assert scheduler.tick(config, NOW + timedelta(minutes=1)).replanned == 0
    assert not any("UPDATE surveys" in s for s in second)
    with db.session() as s:
        assert s.query(SurveyTransition).count() == 3


def test_queued_at_and_lateness_are_the_moment_of_each_batch(
    db: Database, config, frozen_clock: time_machine.Traveller
):
    """With the wall clock (no ``now`` given), each batch is stamped when it is claimed, and its
    lateness observed when it is enqueued: a slow first batch makes the second one later."""
    ids = seed_due_surveys(
        db, 4, NOW - timedelta(minutes=1), config_version=config.schedule_version
    )
    batches: list[list[int]] = []

    def enqueue_many(batch: Sequence[int]) -> None:
        batches.append(list(batch))
        frozen_clock.shift(timedelta(seconds=30))  # a slow broker

    before = _lateness()
    report = Scheduler(db.factory, lambda _i: None, enqueue_many=enqueue_many, batch_size=2).tick(
        config
    )
    assert report.queued == 4 and sorted(i for b in batches for i in b) == ids
    with db.session() as s:
        queued_at = {sid: at for sid, at in s.execute(select(Survey.id, Survey.queued_at))}
        moved_at = dict(
            s.execute(
                select(SurveyTransition.survey_id, SurveyTransition.at).where(
                    SurveyTransition.to_state == "queued"
                )
            ).all()
        )
    first, second = batches[0], batches[1]
    assert {queued_at[i] for i in first} == {NOW}
    assert {queued_at[i] for i in second} == {NOW + timedelta(seconds=30)}
    assert moved_at == queued_at
    count, total = _lateness()
    # Due a minute before NOW: the first batch was enqueued 30 s after NOW, the second 60 s.
    assert count - before[0] == 4
    assert total - before[1] == 2 * 90 + 2 * 120


def _lateness() -> tuple[float, float]:
    samples = {s.name: s.value for m in SCHEDULER_LATENESS.collect() for s in m.samples}
    return (
        samples["nps_scheduler_lateness_seconds_count"],
        samples["nps_scheduler_lateness_seconds_sum"],
    )


def test_two_schedulers_claiming_batches_never_take_the_same_row(pg_db: Database, config):
    n = 1200
    ids = seed_due_surveys(
        pg_db, n, NOW - timedelta(minutes=1), config_version=config.schedule_version
    )
    taken: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(mine: list[int]) -> None:
        try:
            scheduler = Scheduler(
                pg_db.factory, mine.append, enqueue_many=mine.extend, batch_size=50
            )
            barrier.wait()
            scheduler.tick(config, NOW)
        except BaseException as exc:  # surfaced below: a dead thread must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(mine,)) for mine in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert not set(taken[0]) & set(taken[1])
    assert sorted(taken[0] + taken[1]) == ids
    with pg_db.session() as s:
        moves = Counter(
            s.scalars(
                select(SurveyTransition.survey_id).where(SurveyTransition.to_state == "queued")
            )
        )
    assert moves == Counter(dict.fromkeys(ids, 1))
