"""The config of a running process: :class:`ConfigHolder` keeps the last good config and
reloads it on SIGHUP and when the file changes (polled), keeping the old config when the new
file is bad."""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from config.loading import ConfigError, config_path_from_env, parse_config, read_config_bytes
from config.operator import OperatorConfig, default_config

__all__ = ["ChangeCallback", "ConfigHolder", "ReloadResult"]

log = logging.getLogger(__name__)


ChangeCallback = Callable[[OperatorConfig, OperatorConfig], None]
_MISSING = "missing"


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a :meth:`ConfigHolder.reload` did.

    ``ok``: the file on disk is usable (or unchanged and was usable). ``changed``: the active
    config's version changed. ``problems``: why the file was refused (the old config stays).
    """

    ok: bool
    changed: bool
    version: str
    previous_version: str
    message: str
    problems: tuple[str, ...] = ()


class ConfigHolder:
    """The current good config of a long-running process; thread-safe.

    The file is re-read on :meth:`reload` (and on SIGHUP, and every ``interval_seconds`` once
    :meth:`start_watching` runs); a change of content is parsed, and a good file replaces the
    config, while a bad one is logged with its key paths and the last good config stays.
    A file that disappears after it was loaded also keeps the last good config (a restart goes
    to the built-in defaults); a file that appears where there was none is loaded.

    The constructor loads the file once and raises :class:`ConfigError` if it is bad: a process
    does not start on a config it cannot read.
    """

    def __init__(
        self, path: Path | None = None, *, on_change: Iterable[ChangeCallback] = ()
    ) -> None:
        self.path = path if path is not None else config_path_from_env()
        self._lock = threading.Lock()
        self._listeners: list[ChangeCallback] = list(on_change)
        self._stop_event = threading.Event()
        self._watcher: threading.Thread | None = None
        self._previous_sighup: Any = None
        self._sighup_installed = False
        raw = read_config_bytes(self.path)
        if raw is None:
            self._config = default_config()
            self._seen = _MISSING
            self._loaded_from_file = False
            log.info(
                "no config file at %s: built-in defaults (%s)", self.path, self._config.version
            )
        else:
            self._config = parse_config(raw, self.path)
            self._seen = hashlib.sha256(raw).hexdigest()
            self._loaded_from_file = True
            log.info("config %s loaded (version %s)", self.path, self._config.version)
        self._last_problems: tuple[str, ...] = ()

    def current(self) -> OperatorConfig:
        return self._config

    def add_listener(self, callback: ChangeCallback) -> None:
        """``callback(old, new)`` after each successful change of version."""
        with self._lock:
            self._listeners.append(callback)

    def reload(self, *, force: bool = False) -> ReloadResult:
        """Re-read the file; parse it when its content changed (or ``force``)."""
        with self._lock:
            old = self._config
            result = self._reload_locked(old, force)
            listeners = list(self._listeners) if result.changed else []
            new = self._config
        for callback in listeners:
            try:
                callback(old, new)
            except Exception:
                log.exception("config change listener %r failed", callback)
        return result

    def _reload_locked(self, old: OperatorConfig, force: bool) -> ReloadResult:
        def refused(problems: tuple[str, ...], fresh: bool) -> ReloadResult:
            if fresh:
                self._last_problems = problems
                log.error(
                    "config %s refused; keeping version %s:\n%s",
                    self.path,
                    old.version,
                    "\n".join(f"  {p}" for p in problems),
                )
            return ReloadResult(
                ok=False,
                changed=False,
                version=old.version,
                previous_version=old.version,
                message=f"config {self.path} refused; keeping version {old.version}",
                problems=problems,
            )

        def unchanged(message: str) -> ReloadResult:
            return ReloadResult(True, False, old.version, old.version, message)

        try:
            raw = read_config_bytes(self.path)
        except ConfigError as exc:
            return refused(exc.problems, fresh=True)
        seen = _MISSING if raw is None else hashlib.sha256(raw).hexdigest()
        fresh = force or seen != self._seen
        if not fresh:
            if self._last_problems:
                return refused(self._last_problems, fresh=False)
            return unchanged("config file unchanged")
        self._seen = seen
        if raw is None:
            if not self._loaded_from_file:
                self._last_problems = ()
                return unchanged("no config file: built-in defaults")
            return refused(("file: missing (restart to use the built-in defaults)",), fresh=True)
        try:
            new = parse_config(raw, self.path)
        except ConfigError as exc:
            return refused(exc.problems, fresh=True)
        self._last_problems = ()
        self._loaded_from_file = True
        if new.version == old.version:
            return unchanged(f"config file re-read; same meaning (version {old.version})")
        self._config = new
        log.info("config %s reloaded: version %s -> %s", self.path, old.version, new.version)
        return ReloadResult(
            ok=True,
            changed=True,
            version=new.version,
            previous_version=old.version,
            message=f"config reloaded: version {old.version} -> {new.version}",
        )

    # -- SIGHUP ----------------------------------------------------------------------------------
    def install_sighup_handler(self) -> bool:
        """Reload on SIGHUP. Main thread only; returns False where that is not possible."""
        sighup = getattr(signal, "SIGHUP", None)
        if sighup is None:
            log.debug("no SIGHUP on this platform: reload by polling only")
            return False
        if threading.current_thread() is not threading.main_thread():
            log.warning("SIGHUP handler not installed: not on the main thread")
            return False
        self._previous_sighup = signal.signal(sighup, self._on_sighup)
        self._sighup_installed = True
        return True

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        # A signal handler runs in the main thread between bytecodes, possibly inside reload()
        # holding the lock: hand the work to a thread instead of reloading here.
        threading.Thread(target=self._reload_from_signal, name="config-sighup", daemon=True).start()

    def _reload_from_signal(self) -> None:
        try:
            result = self.reload(force=True)
            log.info("SIGHUP: %s", result.message)
        except Exception:
            log.exception("config reload on SIGHUP failed")

    # -- polling ---------------------------------------------------------------------------------
    def start_watching(self, interval_seconds: float = 30.0) -> None:
        """Poll the file every ``interval_seconds`` in a daemon thread (idempotent)."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._stop_event.clear()

        def watch() -> None:
            while not self._stop_event.wait(interval_seconds):
                try:
                    self.reload()
                except Exception:
                    log.exception("config watcher: reload failed")

        self._watcher = threading.Thread(target=watch, name="config-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop the watcher and give SIGHUP back to its previous handler."""
        self._stop_event.set()
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)
        if self._sighup_installed and threading.current_thread() is threading.main_thread():
            previous = self._previous_sighup
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)
            self._sighup_installed = False
