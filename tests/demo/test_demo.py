"""`nps-dispatch demo` runs end to end on the embedded defaults and accounts for every purchase."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from models import Order, SkippedPurchase, Survey
from models.session import make_engine, make_session_factory
from tests.conftest import Database


def test_demo_runs_and_accounts_for_every_purchase(tmp_path: Path):
    db_path = tmp_path / "demo.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NPS_", "TWILIO", "SENDGRID"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "demo",
            "--events",
            "120",
            "--database",
            str(db_path),  # a plain path is a SQLite file
            "--no-serve",
        ],
        env={**env, "COLUMNS": "160"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Every purchase accounted for" in result.stdout
    assert "skipped: no_consent" in result.stdout
    assert "Time from anchor to send" in result.stdout
    assert "through the real HTTP routes" in result.stdout
    assert "non-response adjusted NPS" in result.stdout
    engine = make_engine(f"sqlite:///{db_path}")
    database = Database(engine, make_session_factory(engine))
    with database.session() as s:
        purchases = s.scalar(
            select(func.count()).select_from(Order).where(Order.purchased_at.is_not(None))
        )
        surveys = s.scalar(select(func.count()).select_from(Survey))
        skips = s.scalar(select(func.count()).select_from(SkippedPurchase))
        pending = s.scalar(
            select(func.count())
            .select_from(Survey)
            .where(Survey.state.in_(["waiting_anchor", "scheduled", "queued", "sending"]))
        )
        answered = s.scalar(
            select(func.count())
            .select_from(Survey)
            .where(Survey.state.in_(["answered", "completed"]))
        )
        silent = s.scalar(
            select(func.count()).select_from(Survey).where(Survey.state == "no_response")
        )
    assert purchases == 120
    assert surveys + skips == purchases  # every purchase: a survey or a recorded reason
    assert pending == 0
    assert answered > 0 and silent > 0  # answers came in by HTTP; the rest were closed
