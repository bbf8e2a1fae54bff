"""Product processes started by tests (`nps-dispatch worker`, `web`, `scheduler`), stopped with
everything they started.

A process runs in a session of its own and is stopped through its process group: SIGTERM, then
SIGKILL for whatever is left. Stopping only the parent can leave its children running: a
dramatiq worker process still booting when its parent is told to stop misses the signal and
goes on consuming the test Redis's queues, taking the messages of the tests after it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def started(argv: Sequence[str], *, stop_within: float = 30, **popen: Any) -> Iterator[Any]:
    """``subprocess.Popen(argv, **popen)`` for the ``with`` block, then stopped whole."""
    proc = subprocess.Popen(list(argv), start_new_session=True, **popen)
    try:
        yield proc
    finally:
        stop(proc, stop_within)


def stop(proc: subprocess.Popen[Any], within: float = 30) -> None:
    """SIGTERM to the process's group, SIGKILL to what is left after ``within`` seconds (or at
    once to the children, once the parent has exited)."""
    group = proc.pid  # a session leader's process group has its id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=within)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    proc.wait()
