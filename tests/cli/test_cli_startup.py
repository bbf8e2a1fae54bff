"""`nps-dispatch --help` and the commands that do not report start without loading the
statistics stack (statsmodels, scipy, pandas), which alone takes seconds to import."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("statsmodels", "scipy", "pandas")

PROBE = """
import sys
from cli.main import build_parser
build_parser()
import worker.actors  # what a worker process loads
print(",".join(sorted(m for m in %r if m in sys.modules)))
"""


def test_the_parser_and_the_worker_do_not_import_the_statistics_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE % (HEAVY,)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
