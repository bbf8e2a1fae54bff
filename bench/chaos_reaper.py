"""The chaos run's last line of defence: cleans up after it even when it is killed outright.

``python -m bench.chaos_reaper`` runs in its own session and reads lines on stdin from the run:

- ``group <pgid>``: a process group the run started (killed with SIGKILL at the end);
- ``database <admin url> <name>``: a database the run created (dropped at the end);
- ``directory <path>``: the run's temporary directory (removed at the end);
- ``done``: the run cleaned up itself; exit without doing anything.

When stdin ends without ``done`` (the run crashed, was interrupted or was SIGKILLed, which closes
the pipe), it kills every group still alive, drops the database and removes the directory. It
ignores SIGINT and SIGHUP, so a Ctrl-C meant for the run never stops it before its work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys


def _kill(groups: set[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def _drop(admin_url: str, name: str) -> None:
    from sqlalchemy import text

    from models.session import make_engine

    engine = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            quoted = engine.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    finally:
        engine.dispose()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    groups: set[int] = set()
    database: tuple[str, str] | None = None
    directories: list[str] = []
    for line in sys.stdin:
        word, _, rest = line.strip().partition(" ")
        if word == "done":
            return 0
        if word == "group" and rest.isdigit():
            groups.add(int(rest))
        elif word == "database":
            url, _, name = rest.rpartition(" ")
            database = (url, name)
        elif word == "directory" and rest:
            directories.append(rest)
    _kill(groups)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    if database is not None:
        try:
            _drop(*database)
        except Exception as exc:  # nothing else can be done here: say so
            print(f"chaos reaper: could not drop {database[1]}: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
