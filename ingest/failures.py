"""Naming a failure for logs, answers and dead letters without quoting the data it was about,
and telling a transient database failure (worth running again) from the others."""

from __future__ import annotations

import traceback
from pathlib import Path

from models.session import TRANSIENT_SQLSTATES, transient

__all__ = ["TRANSIENT_SQLSTATES", "TransientFailure", "failure_label", "transient"]


_ROOT = Path(__file__).resolve().parent.parent
_PACKAGES = {
    "config",
    "logs",
    "models",
    "channels",
    "dispatch",
    "ingest",
    "reports",
    "wiring",
    "worker",
    "web",
    "cli",
    "demo",
}


def failure_label(exc: BaseException) -> str:
    """Name a failure for logs and dead letters without its message.

    A database error's message quotes the statement and the values bound to it (contacts,
    names), so only the exception types, the SQLSTATE or SQLite error name and the innermost
    line of our own code that was running are kept.
    """
    label = type(exc).__name__
    orig = getattr(exc, "orig", None)  # the driver's exception under SQLAlchemy's
    if isinstance(orig, BaseException):
        code = getattr(orig, "sqlstate", None) or getattr(orig, "sqlite_errorname", None)
        label += f" ({type(orig).__name__}" + (f" {code})" if code else ")")
    ours = [
        (path, frame.lineno)
        for frame in traceback.extract_tb(exc.__traceback__)
        if (path := _own_file(frame.filename)) is not None
    ]
    if ours:
        path, line = ours[-1]
        label += f" at {path}:{line}"
    return label


class TransientFailure(Exception):
    """A deadlock or serialisation failure while applying an event; the message is its label."""


def _own_file(filename: str) -> str | None:
    try:
        relative = Path(filename).resolve().relative_to(_ROOT)
    except ValueError:
        return None
    return relative.as_posix() if relative.parts[0] in _PACKAGES else None
