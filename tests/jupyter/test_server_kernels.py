"""Notebooks executed from another process through a Jupyter server's REST API, as a
scheduled papermill job does: ``papermill IN OUT --engine vkeys-server`` with the
server's URL and token in the environment. The server (as installed, a real
``jupyter server`` subprocess) starts the kernel, so its provisioner gives it a key,
and the calls are attributed to the user, the kernel and the notebook's path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from servers import JupyterProcess, isolated_env
from traitlets.config import Config

from jupyter_vkeys.server_extension.identity import os_user
from jupyter_vkeys.server_kernels import JupyterServerKernelManager

QUICKSTART = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"


def _events(data_dir: Path) -> list[dict]:
    from jupyter_vkeys.warehouse.readers import read_table
    return read_table("events", data_dir).to_pylist()


def test_papermill_through_a_server_runs_quickstart_with_a_kernel_key(tmp_path):
    env = isolated_env(tmp_path, OPENAI_API_KEY="sk-REAL-SECRET-in-job-env")
    with JupyterProcess("server", tmp_path, env=env) as server:
        (server.root / "jobs").mkdir()
        shutil.copy(QUICKSTART, server.root / "jobs" / "quickstart.ipynb")
        job_env = dict(env, JUPYTER_SERVER_URL=server.base, JUPYTER_TOKEN=server.token)
        out = tmp_path / "quickstart.out.ipynb"
        run = subprocess.run(
            [sys.executable, "-m", "papermill", "jobs/quickstart.ipynb", str(out),
             "--engine", "vkeys-server", "--no-progress-bar", "--kernel", "python3"],
            env=job_env, cwd=server.root, capture_output=True, text=True, timeout=240,
            check=False)
        assert run.returncode == 0, run.stderr[-4000:]
        _, sessions = server.request("GET", "/api/sessions")
        _, kernels = server.request("GET", "/api/kernels")
        _, listed = server.request("GET", "/vkeys/api/keys")
        # A wrong token is refused with what to do, before any kernel starts.
        nb = nbformat.read(QUICKSTART, as_version=4)
        refused = NotebookClient(nb, kernel_manager_class=JupyterServerKernelManager,
                                 config=Config({"JupyterServerKernelManager": {
                                     "server_url": server.base, "token": "not-the-token",
                                     "notebook_path": "jobs/quickstart.ipynb"}}))
        with pytest.raises(PermissionError, match="refused the request .HTTP 403.: set "
                                                  "JUPYTER_TOKEN"):
            refused.execute()
        events = _events(server.data_dir)
        log = server.log()

    executed = nbformat.read(out, as_version=4)
    code = [c for c in executed.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"], outputs
    base_url, key_prefix = code[0].outputs[0]["text"].split()
    assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/vkeys/openai/v1")
    assert key_prefix.startswith("vk-")
    text = json.dumps(outputs)
    assert "REAL-SECRET" not in text
    # the cell-cost line under the calling cells: per-cell attribution works this way too
    assert "vkeys" in json.dumps([o for o in code[1].outputs]), code[1].outputs

    assert sessions == [] and kernels == [], "the job's session and kernel are gone"
    ok = [e for e in events if e["status"] == "ok"]
    assert {e["operation"] for e in ok} == {"chat.completions", "messages"}
    assert len({e["kernel_id"] for e in ok}) == 1 and ok[0]["kernel_id"]
    for event in ok:
        assert (event["user"], event["notebook_path"]) == (os_user(), "jobs/quickstart.ipynb")
        assert event["execution_count"]
    keys = {k["id"]: k for k in listed["keys"]}
    personal = [k for k in listed["keys"] if k.get("metadata", {}).get("kind") == "user"]
    assert [k["owner"] for k in personal] == [os_user()]
    assert keys[ok[0]["key_id"]]["parent_id"] == personal[0]["id"], "a child of the personal key"
    assert "No channel specified" not in log, "every websocket message names its channel"
    assert "REAL-SECRET" not in log and "Traceback" not in log, log[-3000:]


def test_a_job_without_a_server_url_is_told_what_to_set(monkeypatch):
    monkeypatch.delenv("JUPYTER_SERVER_URL", raising=False)
    with pytest.raises(ValueError, match="set JUPYTER_SERVER_URL .or "
                                         "c.JupyterServerKernelManager.server_url."):
        JupyterServerKernelManager()
