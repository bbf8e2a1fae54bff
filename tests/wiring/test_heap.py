"""The long-running processes freeze their start-up heap (``wiring.heap``): the worker's
processes on boot, the web app's processes once the app is built, the ``ingest`` command before
it reads its file. Each check runs in a fresh interpreter: a frozen heap stays frozen for the
rest of the process."""

from __future__ import annotations

import json
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

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)

gc.disable()  # nothing is collected but by the calls below
before = cycle()  # start-up's garbage: collected, not frozen
kept = Node()
frozen = freeze_startup_heap()
after = cycle()  # made after the freeze: still reclaimed by the collector
gc.collect()
old = weakref.ref(kept)
del kept  # frozen: still freed as soon as nothing refers to it
print(frozen > 1000, before() is None, after() is None, old() is None)
"""

WORKER_PROBE = """
import gc
from worker.broker import broker
before = gc.get_freeze_count()
broker.emit_after("process_boot")
print(before == 0, gc.get_freeze_count() > 1000)
"""

# An object of the app is frozen only if the freeze came after the app was built: the
# collector's generations no longer hold it.
WEB_PROBE = """
import gc
from web.app import serve_app
before = gc.get_freeze_count()
app = serve_app()
routes = app.router.routes
print(before == 0, not any(o is routes for o in gc.get_objects()))
"""

INGEST_PROBE = """
import gc, sys
from cli.main import main
code = main(["ingest", sys.argv[1]])
print(code, gc.get_freeze_count() > 1000)
"""


def _probe(source: str, env: dict[str, str], *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", source, *args],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=ROOT,
    )
    return out.stdout.strip().splitlines()[-1]


def _app_env(tmp_path: Path) -> dict[str, str]:
    return {
        "NPS_DATABASE_URL": f"sqlite:///{tmp_path / 'probe.db'}",
        "NPS_CONFIG": str(tmp_path / "absent.toml"),
        "NPS_SECRET_KEY": "probe-secret",
    }


def test_the_freeze_collects_start_up_garbage_first_and_leaves_later_objects_collected() -> None:
    assert _probe(COLLECTOR_PROBE, {}) == "True True True True"


def test_a_worker_process_freezes_its_heap_on_boot() -> None:
    # A Redis broker as in production; nothing connects before a message is sent.
    env = {"NPS_BROKER_URL": "redis://127.0.0.1:1/0"}
    assert _probe(WORKER_PROBE, env) == "True True"


def test_a_web_process_freezes_its_heap_once_the_app_is_built(tmp_path: Path) -> None:
    assert _probe(WEB_PROBE, _app_env(tmp_path)) == "True True"


def test_the_ingest_command_freezes_its_heap_before_reading_the_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "cli.main", "db", "upgrade"],
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", **_app_env(tmp_path)},
        cwd=ROOT,
    )
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"type": "not.an.event"}) + "\n")
    # The one line is rejected (exit code 1); the heap was frozen before it was read.
    assert _probe(INGEST_PROBE, _app_env(tmp_path), str(events)) == "1 True"
