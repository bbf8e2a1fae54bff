"""`nps-dispatch scheduler` timing flags: absent, the production defaults; given, they reach
the scheduler's recovery paths (re-enqueueing, settling, giving up)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from cli.main import build_parser
from cli.operate import tuned_scheduler
from models import Survey
from tests.conftest import NOW
from tests.seeding import seed_due_surveys
from worker.scheduling import build_scheduler as scheduler


def parse(*flags: str):
    return build_parser().parse_args(["scheduler", *flags])


def test_without_flags_the_defaults_stay(sqlite_db, runtime_for):
    runtime = runtime_for(sqlite_db)
    plain = scheduler(runtime)
    settle = plain.settle
    tuned = tuned_scheduler(plain, runtime, parse())
    assert tuned.stuck_after == timedelta(minutes=10)
    assert tuned.sending_timeout == timedelta(minutes=2)
    assert tuned.settle is settle


def test_flags_set_the_timeouts(sqlite_db, runtime_for):
    runtime = runtime_for(sqlite_db)
    args = parse("--interval", "0.5", "--stuck-after", "20", "--sending-timeout", "15")
    tuned = tuned_scheduler(scheduler(runtime), runtime, args)
    assert args.interval == 0.5
    assert tuned.stuck_after == timedelta(seconds=20)
    assert tuned.sending_timeout == timedelta(seconds=15)


@pytest.mark.parametrize("value", ["0", "-5", "soon", "inf", "nan"])
def test_a_flag_must_be_a_positive_number_of_seconds(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--give-up-after", value)
    assert exit_info.value.code == 2
    assert "--give-up-after" in capsys.readouterr().err


def _stuck_send(db, started_ago: timedelta) -> int:
    [survey_id] = seed_due_surveys(db, 1, NOW - timedelta(minutes=5))
    with db.session() as s, s.begin():
        s.execute(
            update(Survey)
            .where(Survey.id == survey_id)
            .values(state="sending", sending_at=NOW - started_ago, attempts=1)
        )
    return survey_id


def test_give_up_after_reaches_the_settling_of_stuck_sends(db, runtime_for):
    runtime = runtime_for(db)  # no provider configured: nothing to look the send up in
    survey_id = _stuck_send(db, started_ago=timedelta(seconds=50))

    default = tuned_scheduler(scheduler(runtime), runtime, parse())
    assert default.settle is not None
    default.settle(survey_id, NOW)
    with db.session() as s:
        assert s.get(Survey, survey_id).state == "sending"  # an hour has not passed

    short = tuned_scheduler(scheduler(runtime), runtime, parse("--give-up-after", "30"))
    assert short.settle is not None
    short.settle(survey_id, NOW)
    with db.session() as s:
        assert s.get(Survey, survey_id).state == "send_unknown"
