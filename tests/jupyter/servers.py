"""Jupyter servers as a user starts them: ``jupyter server|lab|notebook`` subprocesses of
this environment, with the package's installed configuration only.

What the tests set is what any user sets on a command line: a port, a token, a root
dir, and (for the gateway) a data dir and fake mode. Everything else, the kernel
provisioner and the identity provider included, must come from the install.
Kernels are driven over the server's own REST API and kernel websocket, as a
frontend would.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

JUPYTER = str(Path(sys.executable).with_name("jupyter"))
# Debian's chromium for the browser tests (Playwright drives it; never `playwright install`)
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage"]
SCRUBBED = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
            "VKEYS_DATA_DIR", "VKEYS_ADMIN_TOKEN", "VKEYS_PEPPER", "JUPYTER_TOKEN",
            "JUPYTER_DEFAULT_PROVISIONER_NAME",  # as-installed-ok: removed, never set
            "JPY_SESSION_NAME")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This environment without provider keys or a user's Jupyter config: the config the
    install put in ``{sys.prefix}/etc/jupyter`` is the only one found."""
    env = {k: v for k, v in os.environ.items()
           if k not in SCRUBBED and not k.startswith("VKEYS_")}  # e.g. VKEYS_SCREENSHOT_DIR
    env.update({"JUPYTER_CONFIG_DIR": str(tmp_path / "jcfg"),
                "JUPYTER_DATA_DIR": str(tmp_path / "jdata"),
                "JUPYTER_RUNTIME_DIR": str(tmp_path / "jrt"), "JUPYTER_PLATFORM_DIRS": "1",
                "NO_PROXY": "127.0.0.1,localhost", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class JupyterProcess:
    """``jupyter <command>`` on a free loopback port; its log goes to a file."""

    def __init__(self, command: str, tmp_path: Path, *args: str, root: Path | None = None,
                 env: dict[str, str] | None = None, token: str = "as-installed-token",
                 jupyter: str = JUPYTER, ready: str = "/vkeys/api/health") -> None:
        self.command = command
        self.token = token
        self.port = free_port()
        self.root = root or tmp_path / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir = tmp_path / f"vkeys-{command}"
        self.log_path = tmp_path / f"jupyter-{command}-{self.port}.log"
        self.base = f"http://127.0.0.1:{self.port}"
        self.env = env or isolated_env(tmp_path)
        argv = [jupyter, command, f"--port={self.port}", "--ip=127.0.0.1", "--no-browser",
                "--allow-root",
                f"--IdentityProvider.token={token}",  # as-installed-ok: the token, as users pass it
                f"--ServerApp.root_dir={self.root}",
                f"--VKeysGateway.data_dir={self.data_dir}", "--VKeysGateway.fake_mode=always",
                *args]
        self.ready_path = ready  # answers 200 once the server (and its gateway) is up
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(argv, env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT, cwd=self.root)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyter {self.command} exited:\n{self.log()[-4000:]}")
            try:
                status, _ = self.request("GET", self.ready_path, auth=self.ready_path
                                         .startswith("/api/"))
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise AssertionError(f"jupyter {self.command} did not answer:\n{self.log()[-4000:]}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True,
                headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, Any]:
        """One HTTP request to the server, as a script holding the token would send it (no
        cookie). Returns status and decoded JSON (or text)."""
        all_headers = dict(headers or {})
        if auth:
            all_headers["Authorization"] = f"token {self.token}"
        return http(method, self.base + path, body, headers=all_headers, timeout=timeout)

    def start_session(self, path: str, kernel: str = "python3") -> dict[str, Any]:
        status, session = self.request("POST", "/api/sessions", {
            "path": path, "type": "notebook", "name": Path(path).name,
            "kernel": {"name": kernel}})
        assert status == 201, (status, session, self.log()[-3000:])
        return session

    def start_kernel(self, name: str = "python3") -> dict[str, Any]:
        status, kernel = self.request("POST", "/api/kernels", {"name": name})
        assert status == 201, (status, kernel, self.log()[-3000:])
        return kernel

    def execute(self, kernel_id: str, code: str, timeout: float = 90) -> dict[str, Any]:
        """Run ``code`` in a kernel over the server's kernel websocket (as JupyterLab
        does). Returns ``{"status", "text", "errors", "displays"}``."""
        return asyncio.run(ws_execute(self.base, self.token, kernel_id, code, timeout))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> "JupyterProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def http(method: str, url: str, body: Any = None, *, headers: dict[str, str] | None = None,
         timeout: float = 60) -> tuple[int, Any]:
    """One HTTP request with a JSON body; returns status and decoded JSON (or text)."""
    data = None if body is None else json.dumps(body).encode()
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def start_idle_session(base: str, token: str, path: str, timeout: float = 120) -> dict:
    """A notebook session started through a server's sessions API (so the server's
    provisioner gives its kernel a key), returned once the kernel is idle. Browser tests
    start it before the page opens the notebook: JupyterLab then attaches to the
    notebook's running kernel instead of starting one itself, which on a slow machine
    (kernelspecs not loaded yet) went through a "Select Kernel" dialog and a second
    kernel, and the first one's websocket failed ("Kernel never reached an 'alive'
    state" in CI)."""
    auth = {"Authorization": f"token {token}"}
    status, session = http("POST", f"{base}/api/sessions", {
        "path": path, "type": "notebook", "name": Path(path).name,
        "kernel": {"name": "python3"}}, headers=auth)
    assert status == 201, (status, session)
    kernel_id = session["kernel"]["id"]
    # a silent request over the kernel's websocket: the server connects to the kernel
    # and the kernel answers (no In[n] is used up, nothing is shown to the notebook)
    # (on a thread of its own: Playwright's sync API may be running a loop in this one)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(lambda: asyncio.run(ws_execute(
            base, token, kernel_id, "pass", timeout, silent=True))).result()
    assert reply["status"] == "ok", reply
    return session


async def ws_execute(base: str, token: str, kernel_id: str, code: str,
                     timeout: float = 90, silent: bool = False) -> dict[str, Any]:
    """Send one ``execute_request`` on ``/api/kernels/{id}/channels`` and collect stream
    output, errors and displayed data (its mime bundles) until the kernel is idle again."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    url = base.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
    request = HTTPRequest(url, headers={"Authorization": f"token {token}"},
                          connect_timeout=30, request_timeout=timeout)
    conn = await websocket_connect(request)
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": silent, "store_history": not silent,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}}))
    text: list[str] = []  # stdout and stderr, as a frontend shows them
    stdout: list[str] = []
    errors: list[str] = []
    displays: list[dict[str, Any]] = []
    status, idle, count = "", False, None
    deadline = time.monotonic() + timeout
    try:
        while not (idle and status):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"kernel {kernel_id} did not finish: {''.join(text)}")
            raw = await asyncio.wait_for(conn.read_message(), remaining)
            if raw is None:
                raise ConnectionError("kernel websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                text.append(msg["content"]["text"])
                if msg["content"].get("name") == "stdout":
                    stdout.append(msg["content"]["text"])
            elif kind == "error":
                errors.append("\n".join(msg["content"]["traceback"]))
            elif kind in ("display_data", "execute_result"):
                displays.append(msg["content"]["data"])
            elif kind == "execute_reply":
                status = msg["content"]["status"]
                count = msg["content"].get("execution_count")
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
    finally:
        conn.close()
    return {"status": status, "text": "".join(text), "stdout": "".join(stdout),
            "errors": errors, "displays": displays, "execution_count": count}


def result_of(output: dict[str, Any]) -> dict[str, Any]:
    """The JSON a kernel printed after ``RESULT`` (asserting the cell ran cleanly)."""
    assert output["status"] == "ok" and not output["errors"], output
    return json.loads(output["text"].split("RESULT", 1)[1])
