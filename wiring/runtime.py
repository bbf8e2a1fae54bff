"""The wiring of one process: settings, database, operator config, channels.

Built lazily from the environment the first time something asks for it (an actor, the web app,
a CLI command); tests and the demo install their own with :func:`set_runtime`.

Installing a runtime also installs its pseudonymiser (``models.privacy``) as the process's: the
ingest and webhook code, which is handed only a session factory and a config, asks for it there
when it writes a customer's keyed pseudonym (ledger, dead letters, tombstones).
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from channels.links import AnswerLinks
from config import ConfigHolder, OperatorConfig
from config.settings import Settings
from models import privacy
from models.privacy import Pseudonymiser
from models.session import make_engine, make_session_factory

if TYPE_CHECKING:
    from dispatch.sending import Sender


@dataclass
class Runtime:
    """What one process is built from, typed. The services made from it on first use (answer
    links, the sender) are kept here, so a process builds each once; the demo and the tests
    install their own before anything asks."""

    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    config_holder: ConfigHolder
    links: AnswerLinks | None = None
    sender: Sender | None = None
    #: Set once the pseudonyms stored before keying have been re-keyed (or found absent).
    rekeyed: bool = False

    @property
    def config(self) -> OperatorConfig:
        return self.config_holder.current()

    @cached_property
    def secret_key(self) -> str:
        """``NPS_SECRET_KEY``. Only `demo` is meant to run without it (`web` and `worker` refuse
        to start): it gets a random key for the life of the process, which is as long as its
        answer links and pseudonyms need to hold."""
        return self.settings.secret_key or secrets.token_urlsafe(32)

    @cached_property
    def pseudonymiser(self) -> Pseudonymiser:
        """Keyed pseudonyms under a key derived from :attr:`secret_key` (``models.privacy``)."""
        return Pseudonymiser(self.secret_key)

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
            privacy.install(runtime.pseudonymiser)
            _current["runtime"] = runtime
        return _current["runtime"]


def set_runtime(runtime: Runtime | None) -> None:
    """Install ``runtime`` as the process's, with its pseudonymiser. ``None`` removes the
    runtime; the last pseudonymiser stays installed."""
    with _lock:
        _current.pop("runtime", None)
        if runtime is not None:
            privacy.install(runtime.pseudonymiser)
            _current["runtime"] = runtime
