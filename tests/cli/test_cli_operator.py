"""The command line as an operator meets it: erasure asks first, dead letters fit 80 columns
unless asked for whole, help shows the defaults, one-off commands print no start-up log lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from cli.main import build_parser
from models import Customer, DeadLetter
from tests.conftest import TEST_SECRET_KEY, sqlite_database
from tests.factories import purchase

LONG_ERROR = (
    "customer.email: value is not a valid email address: The part after the @-sign is not "
    "valid. It should have a period. (and 3 more problems: total.amount must be a decimal "
    "string, occurred_at is more than a day ahead, END-OF-ERROR)"
)


def cli(*args: str, env: dict[str, str], stdin: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**os.environ, "NPS_SECRET_KEY": TEST_SECRET_KEY, "COLUMNS": "80", **env},
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def shop(tmp_path: Path) -> tuple[dict[str, str], object]:
    db_path = tmp_path / "cli.db"
    database = sqlite_database(db_path)
    env = {"NPS_DATABASE_URL": f"sqlite:///{db_path}", "NPS_CONFIG": str(tmp_path / "none.toml")}
    events = tmp_path / "one.jsonl"
    events.write_text(json.dumps(purchase("E-1", customer_id="c-erase")) + "\n")
    assert cli("ingest", str(events), env=env).returncode == 0
    return env, database


def customers(database) -> list[str | None]:
    with database.session() as s:
        return list(s.scalars(select(Customer.email)))


def test_erase_without_a_terminal_and_without_yes_refuses_and_erases_nothing(shop):
    env, database = shop
    result = cli("customer", "erase", "c-erase", env=env)
    assert result.returncode == 2
    assert "--yes" in result.stderr and "not erased" in result.stderr
    assert customers(database) == ["ana@example.com"]


@pytest.mark.parametrize(("answer", "erased"), [("n\n", False), ("\n", False), ("y\n", True)])
def test_erase_asks_on_a_terminal(shop, answer: str, erased: bool):
    env, database = shop
    leader, follower = os.openpty()
    try:
        os.write(leader, answer.encode())
        result = cli("customer", "erase", "c-erase", env=env, stdin=follower)
    finally:
        os.close(follower)
        os.close(leader)
    assert "[y/N]" in result.stdout
    if erased:
        assert result.returncode == 0, result.stderr
        assert customers(database) != ["ana@example.com"]
    else:
        assert result.returncode == 1
        assert "not erased" in result.stderr
        assert customers(database) == ["ana@example.com"]


def test_erase_with_yes_does_not_ask(shop):
    env, database = shop
    result = cli("customer", "erase", "c-erase", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "[y/N]" not in result.stdout
    assert customers(database) != ["ana@example.com"]


def test_dead_letters_fit_80_columns_and_show_whole_errors_with_full(tmp_path: Path):
    db_path = tmp_path / "dead.db"
    database = sqlite_database(db_path)
    with database.session() as s:
        s.add(
            DeadLetter(
                source="queue",
                event_id="evt_01HXQ8ZJ5R2V4K7M9N3P6T8W0Y",
                payload="{}",
                error=LONG_ERROR,
                created_at=datetime(2026, 11, 20, 10, 0, tzinfo=UTC),
            )
        )
        s.commit()
    env = {"NPS_DATABASE_URL": f"sqlite:///{db_path}", "NPS_CONFIG": str(tmp_path / "none.toml")}
    short = cli("deadletters", "list", env=env)
    assert short.returncode == 0, short.stderr
    assert all(len(line) <= 80 for line in short.stdout.splitlines()), short.stdout
    assert "END-OF-ERROR" not in short.stdout and "…" in short.stdout
    assert "1 dead letters" in short.stdout
    full = cli("deadletters", "list", "--full", env=env)
    assert all(len(line) <= 80 for line in full.stdout.splitlines()), full.stdout
    assert "END-OF-ERROR" in full.stdout
    shown = set(full.stdout.split())
    assert [w for w in LONG_ERROR.split() if w not in shown] == []  # every word, none cut


def test_one_off_commands_print_no_config_log_line(shop):
    env, _ = shop
    result = cli("deadletters", "list", env=env)
    assert result.returncode == 0
    assert "config" not in result.stderr and " INFO " not in result.stderr


def test_help_shows_the_defaults(capsys):
    parser = build_parser()
    for argv, expected in (
        (["worker", "--help"], "shared by every queue (default: 8)"),
        (["worker", "--help"], "(default 48; 0: it shares the others)"),
        (["ingest", "--help"], "(default: 500)"),
        (["deadletters", "list", "--help"], "(default: 100)"),
        (["demo", "--help"], "(default: 8000)"),
        (["scheduler", "--help"], "(default: 5.0)"),
        (["report", "--help"], "(default: table)"),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        out = " ".join(capsys.readouterr().out.split())
        assert expected in out, (argv, out)
