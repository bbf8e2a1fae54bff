"""The long-running processes freeze their start-up heap (``wiring.heap``): the worker's
processes on boot, the web app's processes once the app is built. Each check runs in a fresh
interpreter, since a frozen heap would stay frozen for the rest of the test session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import wiring

ROOT = Path(wiring.__file__).parent.parent

COLLECTOR_PROBE = """
import gc, weakref
from wiring.heap import freeze_startup_heap

class Node:
    pass

kept = Node()
frozen = freeze_startup_heap()
# made after the freeze: a cycle is still reclaimed by the collector
a, b = Node(), Node()
a.other, b.other = b, a
cycle = weakref.ref(a)
del a, b
gc.collect()
# frozen: still freed as soon as nothing refers to it
old = weakref.ref(kept)
del kept
print(frozen > 1000, cycle() is None, old() is None)
"""

WORKER_PROBE = """
import gc
from worker.broker import broker
before = gc.get_freeze_count()
broker.emit_after("process_boot")
print(before == 0, gc.get_freeze_count() > 1000)
"""

WEB_PROBE = """
import gc
from web.app import serve_app
before = gc.get_freeze_count()
serve_app()
print(before == 0, gc.get_freeze_count() > 1000)
"""


def _probe(source: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-c", source],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
    )
    return out.stdout.strip()


def test_objects_made_after_the_freeze_are_collected_and_frozen_ones_still_freed() -> None:
    assert _probe(COLLECTOR_PROBE, {}) == "True True True"


def test_a_worker_process_freezes_its_heap_on_boot() -> None:
    # A Redis broker as in production; nothing connects before a message is sent.
    env = {"NPS_BROKER_URL": "redis://127.0.0.1:1/0"}
    assert _probe(WORKER_PROBE, env) == "True True"


def test_a_web_process_freezes_its_heap_once_the_app_is_built(tmp_path: Path) -> None:
    env = {
        "NPS_DATABASE_URL": f"sqlite:///{tmp_path / 'probe.db'}",
        "NPS_CONFIG": str(tmp_path / "absent.toml"),
        "NPS_SECRET_KEY": "probe-secret",
    }
    assert _probe(WEB_PROBE, env) == "True True"
