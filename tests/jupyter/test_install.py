"""The installed package auto-enables the extension: a fresh virtual environment gets the
wheel, `jupyter server extension list` shows it enabled, the data plane answers, and a
notebook's kernel started through `POST /api/sessions` calls a model with the key it was
given (over the kernel's websocket), attributed in the warehouse to user, kernel and
notebook."""

from __future__ import annotations

import json
import os
import re
import site
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import asyncio

import openai

from jupyter_vkeys.server_extension.identity import os_user
from servers import ws_execute

ROOT = Path(__file__).resolve().parents[2]


KERNEL_CALL = """
import openai
reply = openai.OpenAI(max_retries=0).chat.completions.create(
    model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
print("REPLY-TOKENS", reply.usage.completion_tokens)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_wheel_in_fresh_venv_auto_enables(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(ROOT)], check=True)
    [wheel] = dist.glob("jupyter_vkeys-*.whl")
    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                   check=True)
    # Dependencies come from the test environment (appended after the fresh site-packages,
    # whose .pth files are not processed), the package itself from the wheel just installed.
    fresh_site = next((venv / "lib").glob("python*/site-packages"))
    (fresh_site / "zz_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    assert (venv / "etc/jupyter/jupyter_server_config.d/jupyter_vkeys.json").exists()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
           "JUPYTER_PLATFORM_DIRS": "1"}
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "VKEYS_DATA_DIR", "VKEYS_ADMIN_TOKEN"):
        env.pop(name, None)
    listing = subprocess.run([str(python), "-m", "jupyter_server", "extension", "list"],
                             capture_output=True, text=True, env=env, check=True, cwd=tmp_path)
    text = re.sub(r"\x1b\[[0-9;]*m", "", listing.stdout + listing.stderr)
    assert "jupyter_vkeys enabled" in text and "jupyter_vkeys" in text and "OK" in text, text
    imported = subprocess.run([str(python), "-c", "import jupyter_vkeys; print(jupyter_vkeys.__file__)"],
                              capture_output=True, text=True, env=env, check=True,
                              cwd=tmp_path).stdout
    assert str(venv) in imported, "the package must come from the fresh environment"

    port, token = _free_port(), "install-test-token"
    server = subprocess.Popen(
        [str(python), "-m", "jupyter_server", f"--port={port}", "--no-browser",
         f"--IdentityProvider.token={token}",  # as-installed-ok: the token, as users pass it
         f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.allow_unauthenticated_access=False", "--allow-root"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}/vkeys"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(base + "/api/health", timeout=1) as resp:
                    health = json.loads(resp.read())
                    break
            except OSError:
                time.sleep(0.2)
                if server.poll() is not None:
                    break
        else:
            server.terminate()
            raise AssertionError("no answer from the extension: " + server.communicate()[0][-3000:])
        assert server.poll() is None, server.communicate()[0][-3000:]
        assert health["providers"]["openai"] == "fake"
        auth = {"Authorization": f"token {token}"}
        request = urllib.request.Request(base + "/api/keys", method="POST", data=b'{"owner": "u"}',
                                         headers=auth)
        with urllib.request.urlopen(request, timeout=10) as resp:
            key = json.loads(resp.read())["key"]
        reply = openai.OpenAI(api_key=key, base_url=base + "/openai/v1", max_retries=0
                              ).chat.completions.create(
            model="gpt-4o-mini", max_tokens=2, messages=[{"role": "user", "content": "x"}])
        assert reply.usage.completion_tokens == 2
        # A notebook's kernel, as a frontend starts it: it has its key with nothing configured.
        session = json.loads(urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/api/sessions", method="POST", headers=auth,
            data=json.dumps({"path": "analysis/first.ipynb", "type": "notebook",
                             "kernel": {"name": "python3"}}).encode()), timeout=60).read())
        kernel_id = session["kernel"]["id"]
        output = asyncio.run(ws_execute(f"http://127.0.0.1:{port}", token, kernel_id, KERNEL_CALL))
        assert output["status"] == "ok" and not output["errors"], output
        assert "REPLY-TOKENS 3" in output["text"], output
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=30)
    assert "Traceback" not in output, output[-3000:]
    from jupyter_vkeys.warehouse.readers import read_table
    events = [e for e in read_table("events", tmp_path / "data" / "vkeys").to_pylist()
              if e["kernel_id"] == kernel_id]
    assert [(e["status"], e["user"], e["notebook_path"]) for e in events] == [
        ("ok", os_user(), "analysis/first.ipynb")], events
    assert "without @allow_unauthenticated" not in output or "vkeys" not in output.split(
        "without @allow_unauthenticated", 1)[1][:2000]
