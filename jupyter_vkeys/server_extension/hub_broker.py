"""Kernel keys in a single-user server under JupyterHub: asked of the Hub service.

Under a Hub with a vkeys service configured, the extension runs no gateway: it holds no
provider key, key store or warehouse. :class:`HubKernelKeyBroker` takes the place of the
in-process broker for the kernel provisioner: at each kernel start it asks the service,
with this server's own Hub API token (``JUPYTERHUB_API_TOKEN``, whose scopes must include
``custom:vkeys:use``), for the kernel's key (``POST {service}/api/hub/kernels``), and puts
it and the service's data-plane URLs into the kernel's environment; when the kernel stops
it revokes the key, and when the server stops, every key of this server.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .kernel_keys import key_environment, strip_secrets

log = logging.getLogger("jupyter_vkeys.kernels")
SERVICE_URL_ENV = "VKEYS_HUB_SERVICE_URL"


def hub_service_url(configured: str = "") -> str:
    """The vkeys service's URL (its prefix included) for a server under a Hub:
    ``c.VKeysApp.hub_service_url``, else ``$VKEYS_HUB_SERVICE_URL`` (which the hub admin
    sets in ``c.Spawner.environment``), else ''."""
    return (configured or os.environ.get(SERVICE_URL_ENV, "")).rstrip("/")


def under_hub() -> bool:
    """Whether this server was started by JupyterHub (it has a Hub API token)."""
    return bool(os.environ.get("JUPYTERHUB_API_TOKEN") and os.environ.get("JUPYTERHUB_API_URL"))


class ServiceError(RuntimeError):
    """The service refused or did not answer; the message says what to do."""


class HubKernelKeyBroker:
    """The provisioner's broker in a single-user server: a client of the Hub service."""

    def __init__(self, service_url: str, *, api_token: str, server_name: str = "",
                 root_dir: str = "", denylist: tuple[str, ...] = (),
                 timeout: float = 20.0) -> None:
        self.service_url = service_url.rstrip("/")
        self.api_token = api_token
        self.server_name = server_name
        self.root_dir = root_dir
        self.denylist = denylist
        self.timeout = timeout
        self.kernels: dict[str, str] = {}  # kernel id -> key id

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        request = HTTPRequest(
            f"{self.service_url}/api/hub/{path}", method=method,
            headers={"Authorization": f"token {self.api_token}",
                     "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None,
            allow_nonstandard_methods=True, request_timeout=self.timeout)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            detail = ""
            if exc.response is not None and exc.response.body:
                try:
                    detail = json.loads(exc.response.body)["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    detail = exc.response.body[:200].decode("utf-8", "replace")
            raise ServiceError(f"the jupyter-vkeys service at {self.service_url} answered "
                               f"{exc.code}: {detail or exc.message}") from None
        except OSError as exc:
            raise ServiceError(f"the jupyter-vkeys service at {self.service_url} is not "
                               f"reachable ({exc}); ask the hub admin") from None
        return json.loads(response.body or b"{}")

    def _notebook(self, env: dict[str, str]) -> str:
        path = env.get("JPY_SESSION_NAME", "")
        if path and self.root_dir and os.path.isabs(path):
            try:
                return os.path.relpath(path, self.root_dir)
            except ValueError:
                return path
        return path

    async def launch_env(self, kernel_id: str, env: dict[str, str], user: str = ""
                         ) -> dict[str, str]:
        """Called by the provisioner's ``pre_launch`` at every (re)start. If the service
        does not give a key, the kernel starts without one, and the log says why."""
        env = strip_secrets(env, self.denylist)
        try:
            answer = await self._call("POST", "kernels", {
                "kernel_id": kernel_id, "server_name": self.server_name,
                "notebook_path": self._notebook(env)})
        except ServiceError as exc:
            log.error("jupyter-vkeys: kernel %s starts without a virtual key: %s",
                      kernel_id, exc)
            return env
        self.kernels[kernel_id] = answer["key_id"]
        env = key_environment(env, url=answer["url"], token=answer["key"],
                              key_id=answer["key_id"])
        env["VKEYS_API_URL"] = answer.get("api_url", answer["url"] + "/api")
        return env

    async def kernel_stopped(self, kernel_id: str) -> None:
        """Called by the provisioner's ``cleanup`` (not on restart): revoke the key."""
        key_id = self.kernels.pop(kernel_id, None)
        if key_id is None:
            return
        try:
            await self._call("DELETE", f"kernels/{quote(key_id, safe='')}")
        except ServiceError as exc:
            log.warning("jupyter-vkeys: kernel %s stopped, its key %s was not revoked: %s "
                        "(the service revokes it once the Hub says this server stopped)",
                        kernel_id, key_id, exc)

    async def server_stopped(self) -> None:
        """Called by the extension at shutdown: revoke every kernel key of this server."""
        self.kernels.clear()
        try:
            await self._call("DELETE", f"kernels?server_name={quote(self.server_name)}")
        except ServiceError as exc:
            log.warning("jupyter-vkeys: could not revoke this server's kernel keys: %s", exc)

    def renamed(self, old_path: str, new_path: str) -> None:
        """Notebook renames reach the service at the kernel's next restart."""
