"""``analytics`` reads the warehouse only: importing and using it never imports the gateway
(policy caps come over HTTP), and ``jupyter vkeys --help`` lists its commands."""

from __future__ import annotations

import subprocess
import sys


def test_analytics_never_imports_the_gateway(tmp_path):
    code = f"""
import sys
from datetime import datetime, timedelta, timezone
from jupyter_vkeys.analytics import (budgets, charts, cli, detectors, findings, focus, notebook,
                                     policies, queries, simulate, source)
end = datetime(2026, 3, 2, tzinfo=timezone.utc)
simulate.simulate(days=3, users=3, out={str(tmp_path)!r}, end=end)
con = source.connect({str(tmp_path)!r})
queries.attribution(con, "user,day")
detectors.scan(con, end - timedelta(days=1), end)
focus.frame(con)
bad = sorted(m for m in sys.modules if m.startswith(("jupyter_vkeys.gateway", "tornado",
                                                      "jupyter_vkeys.runtime")))
assert not bad, bad
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr


def test_commands_are_listed():
    run = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0
    for command in ("anomalies", "export-focus", "simulate"):
        assert command in run.stdout
