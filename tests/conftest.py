"""Shared fixtures: real databases built by the real migrations, a real Redis, a clock.

PostgreSQL and Redis come from NPS_TEST_POSTGRES_URL / NPS_TEST_REDIS_URL (`make test` starts
them). Locally a missing server skips its tests; under CI=true it fails them.

NPS_TEST_CLOCK_SHIFT (a duration such as "365d") runs the whole session with the wall clock moved
that far ahead while still ticking. `make test` runs part of the suite that way as a guard: a test
that only passes near the dates written in it reads the wall clock where it should take an
injected `now` (or freeze the clock with time-machine).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import time_machine
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from config import OperatorConfig, load_config
from migrations.runner import upgrade
from models import Base, privacy
from models.privacy import Pseudonymiser
from models.session import make_engine, make_session_factory

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    shift = os.environ.get("NPS_TEST_CLOCK_SHIFT")
    if shift:
        from config import parse_duration

        ahead = datetime.now(UTC) + parse_duration(shift)
        traveller = time_machine.travel(ahead, tick=True)
        traveller.start()
        config.add_cleanup(traveller.stop)


def service_missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true but is not available")
    pytest.skip(f"{what} not available")


def service_url(variable: str, what: str) -> str:
    """The URL of a test service from the environment; without it, the test is skipped (failed
    under CI)."""
    url = os.environ.get(variable)
    if not url:
        service_missing(f"{what} ({variable})")
    assert url is not None
    return url


@dataclass
class Database:
    engine: Engine
    factory: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self) -> Session:
        return self.factory()


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    url = service_url("NPS_TEST_POSTGRES_URL", "PostgreSQL")
    engine = make_engine(url, pool_size=20, max_overflow=20)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception as exc:  # pragma: no cover - depends on the machine
        service_missing(f"PostgreSQL at {url} ({exc.__class__.__name__})")
    upgrade(engine)
    yield engine
    engine.dispose()


def _truncate(engine: Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


def sqlite_database(path: Path) -> Database:
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    return Database(engine, make_session_factory(engine))


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = sqlite_database(tmp_path / "test.db")
    yield database
    database.engine.dispose()


@pytest.fixture
def pg_db(postgres_engine: Engine) -> Iterator[Database]:
    _truncate(postgres_engine)
    yield Database(postgres_engine, make_session_factory(postgres_engine))


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest) -> Database:
    """The same test on both backends."""
    name = "sqlite_db" if request.param == "sqlite" else "pg_db"
    database: Database = request.getfixturevalue(name)
    return database


@pytest.fixture
def redis_url() -> str:
    url = service_url("NPS_TEST_REDIS_URL", "Redis")
    import redis

    try:
        client = redis.Redis.from_url(url)
        client.ping()
        client.flushdb()
    except redis.RedisError as exc:
        service_missing(f"Redis at {url} ({exc.__class__.__name__})")
    return url


@pytest.fixture
def config() -> OperatorConfig:
    """The built-in defaults, with no jitter so that due times are exact in assertions."""
    defaults = load_config(None)
    return defaults.model_copy(
        update={"schedule": defaults.schedule.model_copy(update={"jitter": timedelta(0)})}
    )


NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    return NOW


@pytest.fixture
def frozen_clock() -> Iterator[time_machine.Traveller]:
    """The wall clock held at NOW, for tests that reach code through an entry with no `now`
    parameter (HTTP routes, CLI commands)."""
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


TEST_TOKEN = "test-ingest-token"
TEST_SECRET_KEY = "test-secret-key"


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Iterator[None]:
    """A test that runs a command in this process (``main(["ingest", ...])``) freezes the heap as
    a process does after start-up (``wiring.heap``); thawed again, so that the objects the test
    left behind are collected and the next test starts as the first did."""
    yield
    if gc.get_freeze_count():
        gc.unfreeze()


@pytest.fixture(autouse=True)
def pseudonymiser() -> Iterator[Pseudonymiser]:
    """The keyed pseudonymiser a process's runtime installs from NPS_SECRET_KEY, here with the
    tests' fixed key (the one `runtime_for` gives its runtimes), so that code called without a
    runtime (ingest_event, the webhook functions) has one too."""
    before = privacy.current()
    installed = Pseudonymiser(TEST_SECRET_KEY)
    privacy.install(installed)
    yield installed
    privacy.install(before)


@pytest.fixture
def runtime_for(tmp_path: Path):
    """Build a Runtime over a test database, installed as the process runtime."""
    from config import ConfigHolder
    from config.settings import Settings
    from wiring.runtime import Runtime, set_runtime

    made: list[Runtime] = []

    def build(database: Database, **env: str) -> Runtime:
        settings = Settings.from_env(
            {
                "NPS_INGEST_TOKEN": TEST_TOKEN,
                "NPS_SECRET_KEY": TEST_SECRET_KEY,
                "NPS_DASHBOARD_PASSWORD": "test-dashboard",
                "NPS_PUBLIC_BASE_URL": "https://nps.example.test",
                "NPS_CONFIG": str(tmp_path / "absent.toml"),
                **env,
            }
        )
        runtime = Runtime(
            settings=settings,
            engine=database.engine,
            factory=database.factory,
            config_holder=ConfigHolder(Path(settings.config_path)),
        )
        set_runtime(runtime)
        made.append(runtime)
        return runtime

    yield build
    set_runtime(None)
