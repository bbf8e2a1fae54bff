"""The wiring of one process: settings, database, operator config, channels.

Built lazily from the environment the first time something asks for it (an actor, the web app,
a CLI command); tests and the demo install their own with :func:`set_runtime`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from models.session import make_engine, make_session_factory
from worker.config import ConfigHolder, OperatorConfig
from worker.settings import Settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    config_holder: ConfigHolder
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def config(self) -> OperatorConfig:
        return self.config_holder.current()

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        engine = make_engine(settings.database_url)
        return cls(
            settings=settings,
            engine=engine,
            factory=make_session_factory(engine),
            config_holder=ConfigHolder(Path(settings.config_path)),
        )


_lock = threading.Lock()
_current: dict[str, Runtime] = {}


def get_runtime() -> Runtime:
    with _lock:
        if "runtime" not in _current:
            runtime = Runtime.from_settings(Settings.from_env())
            # Long-running processes pick up an edited config file within a minute.
            runtime.config_holder.start_watching()
            _current["runtime"] = runtime
        return _current["runtime"]


def set_runtime(runtime: Runtime | None) -> None:
    with _lock:
        _current.pop("runtime", None)
        if runtime is not None:
            _current["runtime"] = runtime
