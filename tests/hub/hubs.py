"""A real JupyterHub for the tests: ``jupyterhub`` with configurable-http-proxy (npm),
SimpleLocalProcessSpawner, DummyAuthenticator, on loopback ports, and the vkeys service
configured by ``examples/jupyterhub/jupyterhub_config.py``, the file the README quotes,
loaded unchanged.

What the tests add around that file is what any hub has of its own: ports, an
authenticator, a spawner, users and groups, and a driver service (standing in for the
hub admin's own scripts) with a token to start and stop servers and to open kernels.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "examples" / "jupyterhub" / "jupyterhub_config.py"
BIN = Path(sys.executable).parent
DRIVER_TOKEN = "driver-token-0123456789abcdef0123456789abcdef"
CHP = shutil.which("configurable-http-proxy")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    """``jupyterhub`` in ``root``; users, groups and the provider config given."""

    def __init__(self, root: Path, *, users: dict[str, list[str]], service_config: dict,
                 extra_config: str = "", service_token: str = "",
                 service_port: int | None = None,
                 on_spawned: Callable[[HubProcess], None] | None = None) -> None:
        """With ``service_token`` the vkeys service is external (the README's systemd
        way): its entry keeps its URL (``service_port``: a load balancer's, say) but
        loses its command and gets that ``api_token``; the Hub starts no service and
        does not wait for one. The test starts it in ``on_spawned`` (called once the
        ``jupyterhub`` process runs, before waiting for it: the Hub checks an external
        service at start-up and waits up to 30 s for it to answer), with
        :meth:`external_service_env`."""
        self.root = root
        self.port, self.hub_port, self.api_port = free_port(), free_port(), free_port()
        self.service_port = service_port or free_port()
        self.service_token = service_token
        self.base = f"http://127.0.0.1:{self.port}"
        self.homes = root / "homes"
        self.service_dir = root / "vkeys-service"
        self.service_dir.mkdir(parents=True, mode=0o700)
        self.data_dir = self.service_dir / "data"
        self.service_config = self.service_dir / "config.json"
        self.service_config.write_text(json.dumps(service_config))
        groups: dict[str, list[str]] = {}
        for user, user_groups in users.items():
            for group in user_groups:
                groups.setdefault(group, []).append(user)
        hub_dir = root / "hub"
        hub_dir.mkdir()
        config = hub_dir / "jupyterhub_config.py"
        config.write_text(textwrap.dedent(f"""
            # the test's own hub: ports, authenticator, spawner, users, a driver service
            c.JupyterHub.ip = "127.0.0.1"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "127.0.0.1"
            c.JupyterHub.hub_port = {self.hub_port}
            c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.api_port}"
            c.ConfigurableHTTPProxy.command = [{CHP!r}]
            c.JupyterHub.db_url = "sqlite:///{hub_dir}/jupyterhub.sqlite"
            c.JupyterHub.cookie_secret_file = "{hub_dir}/cookie_secret"
            c.JupyterHub.pid_file = "{hub_dir}/jupyterhub.pid"
            c.JupyterHub.authenticator_class = "dummy"
            c.DummyAuthenticator.password = "test-password"
            c.Authenticator.allowed_users = {set(users)!r}
            c.JupyterHub.spawner_class = "simple"
            c.SimpleLocalProcessSpawner.home_dir_template = "{self.homes}/{{username}}"
            c.Spawner.args = ["--allow-root"]
            c.Spawner.start_timeout = 120
            c.Spawner.http_timeout = 120

            load_subconfig({str(SNIPPET)!r})

            c.JupyterHub.load_groups = {groups!r}
            c.JupyterHub.services.append({{"name": "driver", "api_token": {DRIVER_TOKEN!r}}})
            c.JupyterHub.load_roles.append({{
                "name": "driver", "services": ["driver"],
                "scopes": ["admin:users", "admin:servers", "admin:server_state",
                           "access:servers", "list:users", "read:users", "tokens"]}})
        """) + (textwrap.dedent(f"""
            # an external service: run by the test (or systemd), not by the Hub
            c.JupyterHub.services[0].pop("command")
            c.JupyterHub.services[0]["api_token"] = {service_token!r}
        """) if service_token else "") + extra_config + "\n")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER", "OPENAI", "ANTHROPIC", "VKEYS"))}
        env.update({"PATH": f"{BIN}:{env.get('PATH', '')}",
                    "VKEYS_SERVICE_PORT": str(self.service_port),
                    "VKEYS_SERVICE_CONFIG": str(self.service_config),
                    "VKEYS_SERVICE_DATA_DIR": str(self.data_dir),
                    "PYTHONUNBUFFERED": "1"})
        self.log_path = hub_dir / "jupyterhub.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [str(BIN / "jupyterhub"), "-f", str(config)], cwd=hub_dir, env=env,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if on_spawned is not None:
                on_spawned(self)
            self._wait(lambda: request("GET", f"{self.base}/hub/health")[0] == 200,
                       "the Hub", 90)
            if not service_token:
                self._wait(lambda: self._service_up(), "the vkeys service", 60)
        except BaseException:
            self.stop()  # the Hub and everything it started: nothing left running
            raise

    # -- plumbing --------------------------------------------------------------------
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _wait(self, check, what: str, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyterhub exited:\n{self.log()[-5000:]}")
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"{what} did not come up in {timeout} s:\n{self.log()[-5000:]}")

    def _service_up(self) -> bool:
        status, _ = request("GET", f"{self.service_url}/api/health")
        return status == 200

    def external_service_env(self, listen_port: int) -> dict[str, str]:
        """The JUPYTERHUB_* variables of one replica of the external service, listening
        on ``listen_port`` (what the Hub would give a managed service, and what the
        README's systemd unit sets)."""
        return {"JUPYTERHUB_API_TOKEN": self.service_token,
                "JUPYTERHUB_API_URL": f"http://127.0.0.1:{self.hub_port}/hub/api",
                "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{listen_port}",
                "JUPYTERHUB_SERVICE_PREFIX": "/services/vkeys/",
                "JUPYTERHUB_SERVICE_NAME": "vkeys", "JUPYTERHUB_CLIENT_ID": "service-vkeys",
                "JUPYTERHUB_OAUTH_CALLBACK_URL": "/services/vkeys/oauth_callback",
                "JUPYTERHUB_BASE_URL": "/"}

    @property
    def service_url(self) -> str:
        """The service, reached directly (what kernels use)."""
        return f"http://127.0.0.1:{self.service_port}/services/vkeys"

    def hub(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The Hub's REST API as the driver service."""
        return request(method, f"{self.base}/hub/api{path}", body, token=DRIVER_TOKEN)

    # -- servers -----------------------------------------------------------------------
    def start_server(self, user: str) -> None:
        self.start_servers(user)

    def start_servers(self, *users: str) -> None:
        """Start the servers of ``users`` together (faster than one after another), and
        wait until each is ready."""
        for user in users:
            status, body = self.hub("POST", f"/users/{user}/server")
            assert status in (201, 202), (status, body)
        for user in users:
            self._wait(lambda: (self.hub("GET", f"/users/{user}")[1] or {}).get(
                "servers", {}).get("", {}).get("ready"), f"{user}'s server", 120)

    def stop_server(self, user: str) -> None:
        status, body = self.hub("DELETE", f"/users/{user}/server")
        assert status in (202, 204), (status, body)
        self._wait(lambda: "" not in (self.hub("GET", f"/users/{user}")[1] or {}).get(
            "servers", {"": 1}), f"{user}'s server to stop", 60)

    def server_pid(self, user: str) -> int:
        status, model = self.hub("GET", f"/users/{user}")
        return int(model["servers"][""]["state"]["pid"])

    def user_url(self, user: str) -> str:
        return f"{self.base}/user/{user}"

    def start_kernel(self, user: str) -> str:
        status, kernel = request("POST", f"{self.user_url(user)}/api/kernels",
                                 {"name": "python3"}, token=DRIVER_TOKEN)
        assert status == 201, (status, kernel, self.log()[-3000:])
        return kernel["id"]

    def execute(self, user: str, kernel_id: str, code: str, timeout: float = 90) -> dict:
        import asyncio

        from servers import ws_execute
        return asyncio.run(ws_execute(self.user_url(user), DRIVER_TOKEN, kernel_id, code,
                                      timeout))

    def stop(self) -> None:
        """Stop the Hub (it stops the service and the servers), then anything of its
        process group still alive (a service or server it could not stop)."""
        import psutil

        try:
            descendants = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        for proc in descendants:  # servers and services in sessions of their own
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        self._log.close()


def start_hub(root: Path, attempts: int = 3, **kwargs: Any) -> HubProcess:
    """A :class:`HubProcess`, tried again on fresh ports when one of the free ports it
    picked was taken by another process before the Hub bound it (a loaded CI machine)."""
    for attempt in range(attempts):
        where = root / f"try{attempt}" if attempt else root
        where.mkdir(parents=True, exist_ok=True)
        try:
            return HubProcess(where, **kwargs)
        except AssertionError as exc:
            if "already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def request(method: str, url: str, body: Any = None, *, token: str = "",
            headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, Any]:
    """One HTTP request (JSON), with a Hub token if given; status and decoded JSON."""
    from servers import http

    all_headers = {"Accept": "application/json", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"token {token}"
    return http(method, url, body, headers=all_headers, timeout=timeout)
