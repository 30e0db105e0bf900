"""Kernels for nbclient and papermill that a running Jupyter server starts, so that the
server's extension gives them their virtual key (and the notebook its attribution).

Who uses it: a scheduled job or a script that executes a notebook from *another* process
than the Jupyter server, e.g. ``papermill in.ipynb out.ipynb --engine vkeys-server``
or ``NotebookClient(nb, km=JupyterServerKernelManager(...))``. A kernel nbclient starts
itself is a child of the job, not of the server: no provisioner sees it, and it gets no
key. Through the server's REST API it is one of the server's kernels like any other.

jupyter_server already ships the client side of that REST API (``GatewayKernelManager``,
for Kernel and Enterprise Gateways), but its ``GatewayKernelClient.start_channels``
opens the kernel websocket without the ``Authorization`` header its HTTP requests carry,
and a token-protected Jupyter server answers 403. This module keeps jupyter_server's
classes and adds what is missing:

- :class:`JupyterServerKernelManager` points jupyter_server's ``GatewayClient`` at the
  server (``server_url``, ``token``), starts the kernel through ``POST /api/sessions``
  with the notebook's path (the server's provisioner then knows which notebook it is for:
  cost per notebook), and ends the session when nbclient shuts the kernel down;
- :class:`JupyterServerKernelClient` opens the websocket with the same headers (token,
  cookies) as the REST calls;
- :class:`PapermillServerEngine` is the papermill engine ``vkeys-server`` (entry point
  ``papermill.engine``), which runs a notebook with that manager and the notebook's own
  path as the session path.

Configuration: ``JUPYTER_SERVER_URL`` and ``JUPYTER_TOKEN`` in the environment, or the
traits of :class:`JupyterServerKernelManager`; ``VKEYS_NOTEBOOK_PATH`` overrides the
session path papermill's engine sends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from threading import Thread
from typing import Any

import websocket
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_core.utils import ensure_async
from jupyter_server.gateway.gateway_client import GatewayClient, gateway_request
from jupyter_server.gateway.managers import ChannelQueue, GatewayKernelClient, GatewayKernelManager
from jupyter_server.utils import url_path_join
from tornado import web
from tornado.escape import url_escape
from traitlets import Type, Unicode, default
from traitlets.config import Config

__all__ = ["JupyterServerKernelClient", "JupyterServerKernelManager", "NamedChannelQueue",
           "PapermillServerEngine"]  # noqa: F822 (made on first access: __getattr__)


def _refused(exc: web.HTTPError, server_url: str) -> Exception:
    """What a 401/403 from the server means for the job; other errors as they are."""
    if exc.status_code in (401, 403):
        return PermissionError(f"the Jupyter server at {server_url} refused the request "
                               f"(HTTP {exc.status_code}): set JUPYTER_TOKEN to its token")
    return exc


class NamedChannelQueue(ChannelQueue):
    """A channel queue whose messages name their channel, as the kernel websocket
    protocol asks (jupyter_server's queue leaves it out: the server then assumes shell
    for every message, control ones included, and logs a warning for each)."""

    def send(self, msg: dict[str, Any]) -> None:
        """Called by the kernel client for every message it sends on this channel."""
        super().send({**msg, "channel": self.channel_name})


class JupyterServerKernelClient(GatewayKernelClient):
    """A kernel client over the server's kernel websocket, authenticated like the REST
    calls. Created by :meth:`JupyterServerKernelManager.client` (nbclient calls it)."""

    def _queue(self, name: str) -> ChannelQueue:
        attr = f"_{name}_channel"
        if getattr(self, attr) is None:
            assert self.channel_socket is not None and self._channel_queues is not None
            queue = NamedChannelQueue(name, self.channel_socket, self.log)
            setattr(self, attr, queue)
            self._channel_queues[name] = queue
        return getattr(self, attr)

    shell_channel = property(lambda self: self._queue("shell"), doc="The shell channel.")
    iopub_channel = property(lambda self: self._queue("iopub"), doc="The iopub channel.")
    stdin_channel = property(lambda self: self._queue("stdin"), doc="The stdin channel.")
    control_channel = property(lambda self: self._queue("control"), doc="The control channel.")

    async def start_channels(self, shell: bool = True, iopub: bool = True, stdin: bool = True,
                             hb: bool = True, control: bool = True) -> None:
        """Open ``/api/kernels/{id}/channels`` with the token header, then start the
        channel queues and the thread that routes websocket messages into them."""
        gateway = GatewayClient.instance()
        url = url_path_join(gateway.ws_url or "", gateway.kernels_endpoint,
                            url_escape(self.kernel_id), "channels")
        headers = gateway.load_connection_args().get("headers", {})
        try:
            self.channel_socket = websocket.create_connection(
                url, timeout=GatewayClient.KERNEL_LAUNCH_TIMEOUT, enable_multithread=True,
                header=[f"{name}: {value}" for name, value in headers.items()],
                sslopt={"ca_certs": gateway.ca_certs, "certfile": gateway.client_cert,
                        "keyfile": gateway.client_key})
        except websocket.WebSocketBadStatusException as exc:
            raise PermissionError(
                f"the Jupyter server refused the kernel websocket {url} (HTTP "
                f"{exc.status_code}): set JUPYTER_TOKEN to its token") from None
        await ensure_async(AsyncKernelClient.start_channels(
            self, shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control))
        self.response_router = Thread(target=self._route_responses, daemon=True)
        self.response_router.start()


class JupyterServerKernelManager(GatewayKernelManager):
    """One kernel of a running Jupyter server, for nbclient (``km=``) and papermill."""

    server_url = Unicode(config=True, help=(
        "Base URL of the Jupyter server that starts the kernel, with its base_url, e.g. "
        "http://127.0.0.1:8888/ (default: $JUPYTER_SERVER_URL)."))
    token = Unicode(config=True, help=(
        "The server's token, sent as 'Authorization: token ...' on every request and on "
        "the kernel websocket (default: $JUPYTER_TOKEN)."))
    notebook_path = Unicode(config=True, help=(
        "Path of the notebook, relative to the server's root, sent as the session path "
        "(the kernel's calls are attributed to it). Empty: a bare kernel through "
        "POST /api/kernels, attributed to no notebook."))

    client_class = Unicode("jupyter_vkeys.server_kernels.JupyterServerKernelClient",
                           help="The kernel client class (authenticated websocket).")
    client_factory = Type(klass=JupyterServerKernelClient,
                          help="The kernel client class (authenticated websocket).")

    @default("server_url")
    def _server_url_default(self) -> str:
        return os.environ.get("JUPYTER_SERVER_URL", "")

    @default("token")
    def _token_default(self) -> str:
        return os.environ.get("JUPYTER_TOKEN", "")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.server_url.startswith(("http://", "https://")):
            raise ValueError(
                "no Jupyter server to start the kernel: set JUPYTER_SERVER_URL (or "
                "c.JupyterServerKernelManager.server_url) to its http(s) URL, got "
                f"{self.server_url!r}")
        gateway = GatewayClient.instance()
        gateway.url = self.server_url.rstrip("/")
        gateway.ws_url = "ws" + gateway.url[len("http"):]
        gateway.auth_token = self.token
        gateway.auth_scheme = "token"
        self.kernels_url = url_path_join(gateway.url, gateway.kernels_endpoint)
        self.session_id: str | None = None

    async def _request(self, path: str, **kwargs: Any) -> Any:
        """One REST call to the server; a refusal says what to fix, not a stack trace."""
        url = url_path_join(GatewayClient.instance().url or "", path)
        try:
            response = await gateway_request(url, **kwargs)
        except web.HTTPError as exc:
            raise _refused(exc, self.server_url) from None
        return json.loads(response.body) if response.body else None

    async def start_kernel(self, **kwargs: Any) -> None:
        """Start the kernel as the server's kernel: a session for ``notebook_path``
        (``POST /api/sessions``), or a bare kernel when there is no path. Called by
        nbclient when it sets up the kernel."""
        if not self.notebook_path or kwargs.get("kernel_id"):
            try:
                await super().start_kernel(**kwargs)
            except web.HTTPError as exc:
                raise _refused(exc, self.server_url) from None
            return
        body = {"path": self.notebook_path, "type": "notebook",
                "name": Path(self.notebook_path).name,
                "kernel": {"name": kwargs.get("kernel_name") or self.kernel_name or "python3"}}
        session = await self._request("/api/sessions", method="POST", body=json.dumps(body),
                                      headers={"Content-Type": "application/json"})
        self.session_id = session["id"]
        await super().start_kernel(kernel_id=session["kernel"]["id"])

    async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
        """End the session (the server then stops its kernel), or stop a bare kernel.
        Called by nbclient when the notebook has run."""
        if self.session_id and not restart:
            session_id, self.session_id = self.session_id, None
            try:
                await self._request(f"/api/sessions/{url_escape(session_id)}", method="DELETE")
            except web.HTTPError as exc:
                if exc.status_code != 404:
                    raise
            self.kernel = None
            return
        await super().shutdown_kernel(now=now, restart=restart)


def _session_path(input_path: Any) -> str:
    """The session path papermill's engine sends: ``$VKEYS_NOTEBOOK_PATH``, else the
    input notebook's path as given (relative: as the job names it), else its name."""
    if os.environ.get("VKEYS_NOTEBOOK_PATH"):
        return os.environ["VKEYS_NOTEBOOK_PATH"]
    text = str(input_path or "")
    if not text or "://" in text:
        return Path(text.split("?")[0]).name if text else ""
    path = Path(text)
    return path.as_posix() if not path.is_absolute() else path.name


_ENGINE: type | None = None


def _papermill_engine() -> type:
    """papermill's nbclient engine with the kernel started by a Jupyter server, built on
    first use: papermill imports its engines' entry points while it imports itself, so
    this module must not import papermill when it is imported (papermill is optional)."""
    global _ENGINE
    if _ENGINE is None:
        from papermill.engines import NBClientEngine

        class PapermillServerEngine(NBClientEngine):
            """``papermill IN OUT --engine vkeys-server``: the kernel is one of the Jupyter
            server's (``JUPYTER_SERVER_URL``, ``JUPYTER_TOKEN``)."""

            @classmethod
            def execute_managed_notebook(cls, nb_man: Any, kernel_name: str,
                                         **kwargs: Any) -> Any:
                """Called by papermill for each run: its nbclient engine with a
                :class:`JupyterServerKernelManager` for the input notebook's path (nbclient
                owns it, so it ends the session when the notebook has run, or failed)."""
                config = Config({"JupyterServerKernelManager": {
                    "notebook_path": _session_path(kwargs.get("input_path"))}})
                return super().execute_managed_notebook(
                    nb_man, kernel_name, kernel_manager_class=JupyterServerKernelManager,
                    config=config, **kwargs)

        _ENGINE = _ENGINE or PapermillServerEngine
    return _ENGINE


def __getattr__(name: str) -> Any:
    """``PapermillServerEngine``, the entry point papermill loads, made on first access."""
    if name == "PapermillServerEngine":
        return _papermill_engine()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
