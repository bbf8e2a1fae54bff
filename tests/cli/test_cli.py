"""The command line, run as a user would: a real process, a real file, a real database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from models import InboundEvent, Order, Survey
from tests.conftest import TEST_SECRET_KEY, sqlite_database
from tests.factories import order_event, purchase


def run_cli(*args: str, env: dict[str, str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, "NPS_SECRET_KEY": TEST_SECRET_KEY, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_ingest_file_twice_has_one_effect(tmp_path: Path):
    db_path = tmp_path / "cli.db"
    database = sqlite_database(db_path)
    env = {"NPS_DATABASE_URL": f"sqlite:///{db_path}", "NPS_CONFIG": str(tmp_path / "none.toml")}
    events = [purchase("F-1"), order_event("delivered", "F-1"), purchase("F-2", customer_id="c-2")]
    lines = [json.dumps(e) for e in events] + ["", "{broken json", json.dumps({"type": "x"})]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")

    first = run_cli("ingest", str(path), env=env)
    assert "3 accepted, 0 duplicate, 2 rejected" in first.stdout
    assert "line 5" in first.stderr and "not valid JSON" in first.stderr
    assert "line 6" in first.stderr and "type: must be one of" in first.stderr
    assert first.returncode == 1  # rejected lines make the exit code say so

    second = run_cli("ingest", str(path), env=env)
    assert "0 accepted, 3 duplicate, 2 rejected" in second.stdout
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(Order)) == 2
        assert s.scalar(select(func.count()).select_from(Survey)) == 2
        assert s.scalar(select(func.count()).select_from(InboundEvent)) == 3


def test_db_upgrade_creates_the_schema(tmp_path: Path):
    db_path = tmp_path / "fresh.db"
    result = run_cli("db", "upgrade", env={"NPS_DATABASE_URL": f"sqlite:///{db_path}"})
    assert result.returncode == 0, result.stderr
    assert db_path.exists()


@pytest.mark.parametrize("command", ["worker", "scheduler", "tick"])
def test_queue_processes_refuse_to_start_without_a_broker(command: str):
    env = {k: v for k, v in os.environ.items() if k != "NPS_BROKER_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "NPS_BROKER_URL" in result.stderr


def test_web_refuses_to_start_without_secrets(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPS_")}
    result = subprocess.run(
        [sys.executable, "-m", "cli.main", "web"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "NPS_SECRET_KEY" in result.stderr and "NPS_INGEST_TOKEN" in result.stderr


@pytest.mark.parametrize(
    "command",
    [["ingest", "EVENTS"], ["customer", "export", "c-1"], ["deadletters", "replay"], ["tick"]],
)
def test_commands_that_write_pseudonyms_refuse_to_run_without_the_secret_key(
    tmp_path: Path, command: list[str]
):
    """Without NPS_SECRET_KEY the ledger, dead letters and tombstones would be keyed by a
    throw-away key, and an erasure or export could never find them again."""
    db_path = tmp_path / "nokey.db"
    database = sqlite_database(db_path)
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(purchase("K-1", customer_id="c-1")) + "\n")
    env = {
        "NPS_DATABASE_URL": f"sqlite:///{db_path}",
        "NPS_CONFIG": str(tmp_path / "none.toml"),
        "NPS_SECRET_KEY": "",
        "NPS_BROKER_URL": "redis://127.0.0.1:1/0",
    }
    result = run_cli(*[str(events) if part == "EVENTS" else part for part in command], env=env)
    assert result.returncode == 2
    assert "NPS_SECRET_KEY is not set" in result.stderr
    with database.session() as s:
        assert s.scalar(select(func.count()).select_from(InboundEvent)) == 0


def test_customer_export_and_erase(tmp_path: Path):
    db_path = tmp_path / "gdpr.db"
    database = sqlite_database(db_path)
    env = {"NPS_DATABASE_URL": f"sqlite:///{db_path}", "NPS_CONFIG": str(tmp_path / "none.toml")}
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(purchase("G-1", customer_id="c-gdpr")) + "\n")
    run_cli("ingest", str(path), env=env)
    exported = run_cli("customer", "export", "c-gdpr", env=env)
    data = json.loads(exported.stdout)
    assert data["customer"]["email"] == "ana@example.com"
    assert data["orders"][0]["id"] == "G-1"
    erased = run_cli("customer", "erase", "c-gdpr", "--yes", env=env)
    assert erased.returncode == 0, erased.stderr
    assert run_cli("customer", "export", "c-gdpr", env=env).returncode == 1
    with database.session() as s:
        assert s.scalar(select(Survey.state)) == "withdrawn"


def test_ingest_file_reports_a_reused_event_id_as_a_conflict(tmp_path: Path):
    db_path = tmp_path / "cli.db"
    database = sqlite_database(db_path)
    env = {"NPS_DATABASE_URL": f"sqlite:///{db_path}", "NPS_CONFIG": str(tmp_path / "none.toml")}
    first = purchase("K-1", event_id="evt-reused")
    reused = order_event("cancelled", "K-1", event_id="evt-reused")
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(reused) + "\n")

    result = run_cli("ingest", str(path), env=env)

    assert result.returncode == 1
    assert "1 accepted, 0 duplicate, 0 rejected, 1 conflict" in result.stdout
    assert "evt-reused" in result.stderr and "already used" in result.stderr
    with database.session() as s:
        assert s.scalar(select(Survey.state)) != "withdrawn"  # the cancellation was not applied
