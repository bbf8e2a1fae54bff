"""`nps-dispatch --help` and the commands that do not report start without loading the
statistics stack (statsmodels, scipy, pandas, numpy), which alone takes seconds to import and
hundreds of megabytes in every worker process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import worker

HEAVY = ("statsmodels", "scipy", "pandas", "numpy")

PROBE = """
import sys
from cli.main import build_parser
build_parser()
import worker.actors  # what a worker process loads
print(",".join(sorted(m for m in %r if m in sys.modules)))
"""

# A worker process as it runs: the actors' module, every module an actor imports when it runs
# (actors import lazily), and the runtime with its sender built from the environment.
WORKER_PROBE = """
import sys
import worker.actors
for name in %r:
    __import__(name)
from wiring.runtime import get_runtime
from wiring.services import sender
sender(get_runtime())
print(",".join(sorted(m for m in %r if m in sys.modules)))
"""


def actor_imports() -> list[str]:
    """Every module ``worker/actors.py`` imports, at the top or inside an actor."""
    source = (Path(worker.__file__).parent / "actors.py").read_text()
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return sorted(names - {"__future__"})


def test_the_parser_and_the_worker_do_not_import_the_statistics_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def test_a_running_worker_does_not_import_the_statistics_stack(tmp_path: Path) -> None:
    modules = actor_imports()
    assert "wiring.services" in modules  # the send actors' own wiring is among them
    env = {
        "NPS_DATABASE_URL": f"sqlite:///{tmp_path / 'probe.db'}",
        "NPS_SECRET_KEY": "probe-secret",
        "NPS_INGEST_TOKEN": "probe-token",
        "NPS_DASHBOARD_PASSWORD": "probe-password",
        "NPS_CONFIG": str(tmp_path / "absent.toml"),
        "SENDGRID_API_KEY": "SG.probe",
        "SENDGRID_FROM": "surveys@shop.example",
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", WORKER_PROBE % (modules, HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=Path(worker.__file__).parent.parent,
    )
    assert out.stdout.strip() == ""
