"""One owner of a data directory, as installed (issue 11, item 11): a second `jupyter server`
on the same data directory runs without a gateway (saying why) instead of enforcing every
budget a second time; the first publishes where it runs; the CLI goes through it."""

from __future__ import annotations

import json
import subprocess
import sys

from servers import JupyterProcess, isolated_env


def test_second_server_on_one_data_dir_runs_no_gateway(tmp_path):
    env = isolated_env(tmp_path)
    with JupyterProcess("server", tmp_path, env=env) as first:
        published = json.loads((first.data_dir / "gateway.json").read_text())
        assert published["kind"] == "jupyter" and published["url"].startswith(first.base)
        with JupyterProcess("server", tmp_path, env=env, ready="/api/status") as second:
            kernel = second.start_session("two.ipynb")["kernel"]["id"]
            seen = second.execute(kernel, "import os; print('KEY', os.environ.get("
                                          "'OPENAI_API_KEY', 'none'))")
            status, _ = second.request("GET", "/vkeys/api/keys")
            log = second.log()
        # The CLI finds the first server and goes through its API.
        listing = subprocess.run(
            [sys.executable, "-m", "jupyter_vkeys.cli", "keys", "list", "--data-dir",
             str(first.data_dir)], capture_output=True, text=True, env=env, timeout=60)
        assert first.request("GET", "/vkeys/api/health")[0] == 200
    assert "KEY none" in seen["text"], seen
    assert status == 503
    assert "the gateway did not start" in log and str(published["pid"]) in log
    assert "Traceback" not in log
    assert listing.returncode == 0, listing.stderr
