"""Logging of every process (web, worker, scheduler, CLI, demo): one format, nothing personal.

:func:`configure_logging` installs one handler on the root logger, plain text or JSON lines
(``NPS_LOG_FORMAT=json``) at ``NPS_LOG_LEVEL``. Personal data and secrets are kept out of it at
two levels:

- at the source: a dramatiq message is logged as ``actor_name[message_id]``, never with its
  arguments (dramatiq's worker renders a failed message with its event, contacts included); a
  SQLAlchemy result row is never rendered (engines hide bound parameters themselves, see
  ``models/session.py``); uvicorn's access log shows ``/s/[token]`` for an answer link, hides
  credential-like query parameters and truncates the client address;
- on the way out: every rendered message and traceback goes through
  :func:`channels.masking.mask_log_text` (email addresses, phone numbers, answer tokens) and has
  the configured secrets, ``Bearer``/``Basic`` credentials and URL passwords replaced
  (:mod:`logs.redaction`).

Web lines carry a request id (``web/request_ids.py``), worker lines the dramatiq message id and
the survey or event being handled (``worker/log_middleware.py``); any code can add its own
with :func:`log_context` or ``extra={"survey_id": ...}``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, TextIO

from channels.masking import mask_log_text
from config.settings import environ
from logs.redaction import (
    ACCESS_LOGGER,
    RedactingFilter,
    Redactor,
    UvicornAccessFilter,
    secrets_from_env,
)

__all__ = [
    "CONTEXT_FIELDS",
    "JsonFormatter",
    "RedactingFilter",
    "Redactor",
    "TextFormatter",
    "UvicornAccessFilter",
    "clear_context",
    "configure_logging",
    "current_request_id",
    "log_context",
    "make_handler",
    "secrets_from_env",
    "set_context",
]

log = logging.getLogger(__name__)
_EXCEPTION_FORMATTER = logging.Formatter()

LEVEL_VARIABLE = "NPS_LOG_LEVEL"
FORMAT_VARIABLE = "NPS_LOG_FORMAT"
FORMATS = ("text", "json")
CONTEXT_FIELDS = ("request_id", "survey_id", "event_id", "message_id")
REQUEST_ID_HEADER = "X-Request-ID"


_NO_FIELDS: Mapping[str, str] = MappingProxyType({})
_fields: ContextVar[Mapping[str, str]] = ContextVar("nps_log_fields", default=_NO_FIELDS)


# --- context ------------------------------------------------------------------------------------
@contextmanager
def log_context(**fields: object) -> Iterator[None]:
    """Add ``survey_id=``, ``event_id=``... to every line logged inside the block."""
    added = {key: str(value) for key, value in fields.items() if value is not None}
    token = _fields.set({**_fields.get(), **added})
    try:
        yield
    finally:
        _fields.reset(token)


def current_request_id() -> str | None:
    return _fields.get().get("request_id")


def set_context(fields: Mapping[str, str]) -> None:
    """Replace the context of the current task or thread (a queue message or an HTTP request
    begins: its ids tag every line logged until :func:`clear_context`)."""
    _fields.set(dict(fields))


def clear_context() -> None:
    _fields.set(_NO_FIELDS)


# --- formats ------------------------------------------------------------------------------------
def _time(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _ContextRecordFactory:
    """Wraps the record factory so that each record keeps the context it was logged in: a
    handler may format it later, or in another thread (``extra=`` still wins)."""

    def __init__(self, wrapped: Callable[..., logging.LogRecord]) -> None:
        self.wrapped = wrapped

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        record = self.wrapped(*args, **kwargs)
        fields = _fields.get()
        if fields:
            record.nps_context = fields
        return record


def _install_record_factory() -> None:
    current = logging.getLogRecordFactory()
    if not isinstance(current, _ContextRecordFactory):
        logging.setLogRecordFactory(_ContextRecordFactory(current))


def _context(record: logging.LogRecord) -> dict[str, str]:
    bound: Mapping[str, str] = getattr(record, "nps_context", None) or _fields.get()
    found: dict[str, str] = {}
    for key in CONTEXT_FIELDS:
        value = getattr(record, key, None)
        if value is None:
            value = bound.get(key)
        if value is not None:
            # Shop-chosen ids could hold anything: masked like the message.
            found[key] = mask_log_text(str(value))[:200]
    return found


def _exception_text(record: logging.LogRecord) -> str | None:
    if record.exc_info and not record.exc_text:
        record.exc_text = _EXCEPTION_FORMATTER.formatException(record.exc_info)
    return record.exc_text or None


class TextFormatter(logging.Formatter):
    """``2026-11-20T10:00:00.123Z INFO dispatch.sending survey_id=12: survey 12 sent ...``"""

    def format(self, record: logging.LogRecord) -> str:
        context = "".join(f" {key}={value}" for key, value in _context(record).items())
        line = f"{_time(record)} {record.levelname} {record.name}{context}: {record.getMessage()}"
        exception = _exception_text(record)
        if exception:
            line += "\n" + exception
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the context fields present, and
    ``exception`` / ``stack`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, str] = {
            "time": _time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context(record),
        }
        exception = _exception_text(record)
        if exception:
            data["exception"] = exception
        if record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, ensure_ascii=False)


# --- installation -------------------------------------------------------------------------------
def _env_of(source: object) -> Mapping[str, str]:
    if source is None:
        return environ()
    env = getattr(source, "env", None)  # config.settings.Settings keeps the environment it read
    if isinstance(env, Mapping):
        return env
    if isinstance(source, Mapping):
        return source
    raise TypeError(f"configure_logging takes Settings or a mapping, not {type(source).__name__}")


def make_handler(
    log_format: str = "text", secrets: Iterable[str] = (), stream: TextIO | None = None
) -> logging.Handler:
    """A stream handler (stderr by default) in ``log_format``, behind the redacting filter."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(Redactor(secrets)))
    return handler


def _level(value: str | None) -> tuple[int, str | None]:
    name = (value or "INFO").strip().upper()
    if name.isdigit():
        return int(name), None
    level = logging.getLevelName(name)
    if isinstance(level, int):
        return level, None
    return logging.INFO, f"{LEVEL_VARIABLE}={value!r} is not a log level; using INFO"


def configure_logging(source: object = None, *, stream: TextIO | None = None) -> logging.Handler:
    """Set up logging for this process from ``Settings``, a mapping or the process environment.

    Replaces every handler of the root logger (as ``basicConfig(force=True)`` does), so it can
    run again in a dramatiq worker process that inherited or was given another setup. uvicorn's
    loggers lose their own handlers and propagate here: run uvicorn with ``log_config=None``.
    """
    env = _env_of(source)
    level, level_problem = _level(env.get(LEVEL_VARIABLE))
    log_format = (env.get(FORMAT_VARIABLE) or "text").strip().lower()
    format_problem = None
    if log_format not in FORMATS:
        format_problem = f"{FORMAT_VARIABLE}={log_format!r} is not one of {', '.join(FORMATS)}"
        log_format = "text"
    handler = make_handler(log_format, secrets_from_env(env), stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    _install_record_factory()
    for name in ("uvicorn", "uvicorn.error", ACCESS_LOGGER):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, UvicornAccessFilter) for f in access.filters):
        access.addFilter(UvicornAccessFilter())
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    for problem in (level_problem, format_problem):
        if problem:
            log.warning(problem)
    return handler


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    # Printed by Python, a traceback would bypass the masking.
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    log.critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback)
    log.critical("uncaught exception in thread %s", name, exc_info=exc_info)
