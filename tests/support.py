"""Test helpers shared by the suites: gateways on real ports, the fake upstream process,
SDK clients. Fixtures that use them live in conftest.py."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable

import tornado.httpserver
from traitlets.config import Config

from jupyter_vkeys.gateway import VKeysGateway, make_app
from jupyter_vkeys.gateway.app import proxy_routes
from jupyter_vkeys.gateway.lean_server import LeanServer
from jupyter_vkeys.http.server import listening_socket

REAL_OPENAI_KEY = "sk-real-openai-SECRET-0123456789abcdef"
REAL_ANTHROPIC_KEY = "sk-ant-real-SECRET-fedcba9876543210"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Clock:
    """A controllable clock: real time plus an offset tests can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.frozen: float | None = None

    def __call__(self) -> float:
        return self.frozen if self.frozen is not None else time.time() + self.offset

    def advance(self, seconds: float) -> None:
        if self.frozen is not None:
            self.frozen += seconds
        else:
            self.offset += seconds


class RunningGateway:
    """A started gateway served on 127.0.0.1 from a background thread, behind the
    standalone server's lean front (``front="lean"``) or tornado's HTTP server alone
    (``front="tornado"``, as inside a Jupyter server)."""

    def __init__(self, config: Config, clock: Clock, front: str = "lean") -> None:
        self.clock = clock
        self.front = front
        self.gateway = VKeysGateway(config=config, clock=clock)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("gateway did not start")
        if self._error:
            raise self._error
        self.url = f"http://127.0.0.1:{self.port}{self.gateway.prefix}"
        self.admin_token = self.gateway.admin_secret()

    _error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.gateway.start())
            if self.front == "lean":
                sock = listening_socket("127.0.0.1", self.port)
                self.server = LeanServer(self.gateway, make_app(self.gateway),
                                         proxy_routes(self.gateway))
                self.loop.run_until_complete(self.server.listen(sock))
            else:
                self.server = tornado.httpserver.HTTPServer(
                    make_app(self.gateway),
                    max_body_size=self.gateway.max_body_bytes * 2 + (1 << 20))
                self.server.listen(self.port, "127.0.0.1")
        except BaseException as exc:  # surfaced to the test thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    _stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True

        async def shutdown() -> None:
            self.server.stop()
            await self.gateway.stop()
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def call_in_loop(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the gateway's loop (to read or change state consistently)."""
        async def run() -> Any:
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    # -- admin API over HTTP -------------------------------------------------------------
    def admin(self, method: str, path: str, body: Any = None, token: str | None = None
              ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + "/api" + path, data=data, method=method,
            headers={"Authorization": f"Bearer {token or self.admin_token}",
                     "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def create_key(self, **fields: Any) -> tuple[str, dict]:
        status, body = self.admin("POST", "/keys", fields)
        assert status == 201, body
        return body["key"], body

    @property
    def events(self) -> list[dict]:
        return self.call_in_loop(lambda: list(self.gateway.sink.events))


class FakeUpstream:
    """The fake provider in its own process, on a real port."""

    def __init__(self, expect_key: str = "") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_vkeys.providers.fake_server", "--port",
             str(self.port), "--expect-key", expect_key],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("fake upstream did not start")

    def seen(self) -> list[dict]:
        with urllib.request.urlopen(self.url + "/_fake/requests") as resp:
            return json.loads(resp.read())

    def stop(self) -> str:
        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=10)
        return out


def openai_client(gw: RunningGateway, key: str, **kwargs: Any):
    import openai
    return openai.OpenAI(api_key=key, base_url=gw.url + "/openai/v1", max_retries=0, **kwargs)


def anthropic_client(gw: RunningGateway, key: str, **kwargs: Any):
    import anthropic
    return anthropic.Anthropic(api_key=key, base_url=gw.url + "/anthropic", max_retries=0,
                               **kwargs)


class ServeProcess:
    """``jupyter-vkeys serve`` in its own process (for crash and restart tests)."""

    def __init__(self, data_dir: Path, config: dict | None = None, port: int | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/vkeys"
        self.admin_token = "test-admin-token-0123456789"
        config_file = data_dir.parent / f"{data_dir.name}-config.json"
        config_file.write_text(json.dumps({"VKeysGateway": {"roll_seconds": 0.5,
                                                            **(config or {})}}))
        self.log = open(data_dir.parent / f"{data_dir.name}-serve.log", "a")
        full_env = {**os.environ, "VKEYS_ADMIN_TOKEN": self.admin_token, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_vkeys.cli", "serve", "--data-dir", str(data_dir),
             "--port", str(self.port), "--config", str(config_file)],
            stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/api/health", timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(Path(self.log.name).read_text())
                time.sleep(0.1)
        raise RuntimeError("gateway process did not start")

    def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + "/api" + path, data=data, method=method,
                                         headers={"Authorization": f"Bearer {self.admin_token}"})
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
        self.log.close()


def build_relay_gateway(make_gateway, fake_upstream, monkeypatch, tmp_path, client: str,
                        front: str = "lean"):
    """A gateway whose providers are the fake upstream processes, with real-looking keys
    (one from an environment variable, one from a secrets file)."""
    monkeypatch.setenv("TEST_OPENAI_KEY", REAL_OPENAI_KEY)
    secret_file = tmp_path / "anthropic.key"
    secret_file.write_text(REAL_ANTHROPIC_KEY + "\n")
    providers = {
        "openai": {"kind": "openai", "base_url": fake_upstream["openai"].url + "/v1",
                   "api_key_env": "TEST_OPENAI_KEY"},
        "anthropic": {"kind": "anthropic", "base_url": fake_upstream["anthropic"].url,
                      "api_key_file": str(secret_file)},
    }
    # The fake provider process reads its controls from the body's metadata (fake_controls):
    # no x-vkeys-* header ever leaves the gateway.
    return make_gateway(providers=providers, read_timeout=3.0, upstream_client=client,
                        front=front)


def fake_controls(error: str = "", latency_ms: float | None = None,
                  chunk_delay_ms: float | None = None) -> dict[str, Any]:
    """``extra_body`` for an SDK call that drives a fake provider served over HTTP behind
    the gateway (the body is relayed unchanged; x-vkeys-* headers are not)."""
    metadata = {}
    if error:
        metadata["vkeys_fake_error"] = error
    if latency_ms is not None:
        metadata["vkeys_fake_latency_ms"] = str(latency_ms)
    if chunk_delay_ms is not None:
        metadata["vkeys_fake_chunk_delay_ms"] = str(chunk_delay_ms)
    return {"metadata": metadata}


def key_call(gw, method: str, path: str, key: str, body: Any = None) -> tuple[int, Any]:
    """``method`` on ``gw.url + path`` with a virtual key (as Bearer and x-api-key, so both
    dialects read it); ``body`` a dict (sent as JSON) or raw bytes. Returns (status, JSON)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    request = urllib.request.Request(gw.url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {key}", "x-api-key": key,
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
