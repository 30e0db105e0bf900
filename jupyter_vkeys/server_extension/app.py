"""The gateway inside ``jupyter lab`` / ``jupyter server``: :class:`VKeysApp`.

Auto-enabled on install (``jupyter-config/jupyter_server_config.d/jupyter_vkeys.json``,
which jupyter_server reads for ``jpserver_extensions`` only: whatever else the
extension needs, it applies itself when linked). At link time it makes
``vkeys-provisioner`` the default provisioner of local kernels
(:mod:`.provisioning`) and, in a personal (non-Hub) server, gives every
authenticated request one user (:mod:`.identity`). It mounts the gateway under ``{base_url}vkeys/``: the data plane as plain
tornado handlers that accept only virtual keys, the admin API behind Jupyter's
own authentication. Kernels reach the same gateway through a loopback-only
lean front (``kernel_port``), which is faster than tornado's handlers. It
starts the gateway (store, warehouse, budgets) in the async start hook, gives
the kernel provisioner a :class:`KernelKeyBroker`, and closes everything in
``stop_extension``.

Configuration: ``c.VKeysApp.*`` for the Jupyter side (below) and
``c.VKeysGateway.*`` for the gateway (providers, catalog, warehouse...).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Dict, Int, List, TraitError, Unicode, validate

from ..gateway.app import gateway_handlers, make_app, proxy_routes, route_prefix
from ..gateway.core import VKeysGateway
from ..gateway.lean_server import LeanServer, listening_socket
from ..registry import InvalidKeyRequest, check_name
from ..runtime import DataDirBusy
from .auth import JupyterAdminAuth, jupyter_admin_method
from .hub_broker import HubKernelKeyBroker, hub_service_url, under_hub
from .identity import apply_personal_identity, os_user
from .kernel_keys import KernelKeyBroker, set_active
from .provisioning import ProvisionerNotice, restore_default, use_vkeys_provisioner

log = logging.getLogger("jupyter_vkeys")

CONTENTS_EVENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class VKeysApp(ExtensionApp):
    """jupyter-vkeys as a Jupyter server extension."""

    name = "jupyter_vkeys"
    load_other_extensions = True

    inject_kernel_keys = Bool(True, help=(
        "Give every local kernel started by this server its own virtual key (OPENAI_API_KEY, "
        "ANTHROPIC_API_KEY, base URLs and NO_PROXY in its environment). The extension makes "
        "its provisioner the default of local kernels itself; False leaves kernels without "
        "keys (provider keys are still removed from their environment).")).tag(config=True)
    personal_user = Unicode("", help=(
        "In a personal (non-Hub) server, the one user every authenticated request belongs "
        "to (token, password or cookie), so one person has one personal key and one budget. "
        "Default: the OS user. Not applied under JupyterHub or when "
        "ServerApp.identity_provider_class is configured.")).tag(config=True)
    @validate("personal_user")
    def _valid_personal_user(self, proposal: Any) -> str:
        """The name becomes the scope ``user:<name>``: refuse at load what the registry would
        refuse at the first kernel start."""
        try:
            return check_name("c.VKeysApp.personal_user", proposal["value"])
        except InvalidKeyRequest as exc:
            raise TraitError(str(exc)) from None

    default_policy = Dict({"budgets": [{"usd": 20, "period": "month", "soft": 0.8}]}, help=(
        "Policy of a user's personal key, created at their first kernel start (same shape as "
        "the admin API: models, rpm, tpm, max_concurrency, budgets).")).tag(config=True)
    project_policy = Dict({}, help="Policy of a project's key, created when a notebook of "
                                   "the project first starts a kernel.").tag(config=True)
    projects = Dict({}, help=("Project folders: {'projects/churn': 'churn'} maps notebooks "
                              "under a path (relative to the server root) to a project. "
                              "Otherwise a marker file (see project_marker) names it.")).tag(
        config=True)
    project_marker = Unicode(".vkeys.toml", help="File whose `project = \"name\"` makes the "
                                                 "folder holding it (and below) a project.").tag(
        config=True)
    kernel_env_denylist = List(Unicode(), [], help=(
        "Environment variables (names or globs) removed from kernel environments, in addition "
        "to provider keys, which are always removed.")).tag(config=True)
    admin_users = List(Unicode(), [], help=("Jupyter users allowed to use the admin API. "
                                            "Empty: any authenticated user of this server "
                                            "(a personal server has one).")).tag(config=True)
    gateway_url = Unicode("", help="URL kernels use to reach the gateway. Default: the "
                                   "loopback front of kernel_port, else this server's own "
                                   "URL + /vkeys.").tag(config=True)
    kernel_port = Int(0, help=(
        "Loopback port (127.0.0.1) on which this server's kernels reach the gateway, answered "
        "by the lean HTTP front rather than tornado's handlers (benchmarks/run.py: about half "
        "the added latency, twice the throughput). It opens only what a virtual key opens "
        "(the data plane, models, /api/me, health), never the admin API. 0 picks a free "
        "port; -1 turns it off, and kernels use this server's own URL + /vkeys. Unused when "
        "gateway_url is set.")).tag(config=True)

    hub_service_url = Unicode("", help=(
        "Under JupyterHub: the URL of the jupyter-vkeys Hub service, prefix included (e.g. "
        "http://127.0.0.1:10101/services/vkeys). Default: $VKEYS_HUB_SERVICE_URL, which the "
        "hub admin sets in c.Spawner.environment. When set under a Hub, this server runs no "
        "gateway and holds no provider key, store or warehouse: its kernels get their keys "
        "from the service, with this server's Hub token.")).tag(config=True)

    kernel_front: LeanServer | None = None
    gateway: VKeysGateway | None = None
    hub_broker: HubKernelKeyBroker | None = None
    previous_provisioner: str | None = None
    user_name: str = ""

    def _link_jupyter_server_extension(self, serverapp: Any) -> None:
        """Called by jupyter_server when it links extensions, before it builds its kernel
        manager and identity provider: apply what the installed config cannot carry."""
        super()._link_jupyter_server_extension(serverapp)
        _share_server_log(serverapp)
        self.previous_provisioner = use_vkeys_provisioner(serverapp)
        self.user_name = apply_personal_identity(serverapp, self.personal_user)

    @property
    def service_url(self) -> str:
        """The Hub service this server uses for its kernels' keys ('' outside a Hub, or
        when none is configured)."""
        return hub_service_url(self.hub_service_url) if under_hub() else ""

    def initialize_settings(self) -> None:
        """Build the gateway from config (started later, in the async start hook); under
        a Hub with a vkeys service, no gateway at all."""
        _share_server_log(self.serverapp)
        if self.service_url:
            self.settings["vkeys_admin_users"] = set()
            return
        self.gateway = VKeysGateway(parent=self, config=self.config)
        self.settings["vkeys_admin_users"] = set(self.admin_users)
        self.settings["vkeys_gateway"] = self.gateway

    def initialize_handlers(self) -> None:
        """Mount the gateway's routes (ExtensionApp prefixes them with base_url)."""
        if self.gateway is None:
            return  # under a Hub: the service serves every route
        self.handlers.extend(gateway_handlers(self.gateway, admin_auth=JupyterAdminAuth,
                                              admin_decorate=jupyter_admin_method))

    async def _start_jupyter_server_extension(self, serverapp) -> None:
        """Called by jupyter_server once its loop runs: open store and warehouse, set up
        per-kernel keys."""
        await super()._start_jupyter_server_extension(serverapp)
        if self.gateway is None:
            self._start_hub_client(serverapp)
            return
        try:
            await self.gateway.start()
        except (DataDirBusy, ValueError) as exc:
            # Another gateway holds the data directory (a second JupyterLab would enforce
            # every budget twice), or the configuration is refused: serve no gateway.
            reason = f"the gateway did not start: {exc}"
            log.error("jupyter-vkeys: %s. This server runs without it: kernels get no "
                      "virtual key and the /vkeys routes answer 503 (use another "
                      "c.VKeysGateway.data_dir, or stop the other gateway)", reason)
            set_active(None, reason=reason)
            await self.gateway.stop()  # lets go of whatever it had opened
            return
        self.gateway.publish(route_prefix(self.gateway, serverapp.connection_url), "jupyter")
        self.provider_variables = [spec.get("api_key_env", "") for spec in
                                   self.gateway.providers.values()
                                   if isinstance(spec, dict) and spec.get("api_key_env")]
        ProvisionerNotice(serverapp).listen()
        if not self.inject_kernel_keys:
            set_active(None, reason="kernel keys are off (c.VKeysApp.inject_kernel_keys)")
            log.info("jupyter-vkeys: kernel keys are off (c.VKeysApp.inject_kernel_keys); "
                     "kernels start without a virtual key")
        else:
            url = self.gateway_url or await self._kernel_url(serverapp)
            broker = KernelKeyBroker(
                self.gateway, url=url, root_dir=serverapp.root_dir, projects=self.projects,
                marker=self.project_marker, default_policy=self.default_policy,
                project_policy=self.project_policy,
                denylist=[*self.kernel_env_denylist, *self.provider_variables],
                default_user=self.user_name or self.personal_user or os_user(),
                api_url=route_prefix(self.gateway, serverapp.connection_url) + "/api")
            set_active(broker)
            self.broker = broker
            try:
                serverapp.event_logger.add_listener(schema_id=CONTENTS_EVENTS,
                                                    listener=self._on_contents_event)
            except Exception:  # older servers: renames are picked up at the next restart
                log.debug("no contents events; notebook renames apply at kernel restart")
        log.info("jupyter-vkeys: gateway at %s%s", serverapp.base_url.rstrip("/"),
                 self.gateway.prefix)

    def _start_hub_client(self, serverapp) -> None:
        """Under a Hub: kernels get their keys from the service (no gateway here)."""
        ProvisionerNotice(serverapp).listen()
        if not self.inject_kernel_keys:
            set_active(None, reason="kernel keys are off (c.VKeysApp.inject_kernel_keys)")
            log.info("jupyter-vkeys: kernel keys are off (c.VKeysApp.inject_kernel_keys)")
            return
        self.hub_broker = HubKernelKeyBroker(
            self.service_url, api_token=os.environ["JUPYTERHUB_API_TOKEN"],
            server_name=os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
            root_dir=serverapp.root_dir, denylist=tuple(self.kernel_env_denylist))
        set_active(self.hub_broker)
        _stop_cleanly_on_sigint(serverapp)
        log.info("jupyter-vkeys: under JupyterHub; kernels get their keys from the service "
                 "at %s (no gateway runs in this server)", self.service_url)

    async def _kernel_url(self, serverapp) -> str:
        """Where kernels reach the gateway: the loopback front (started here) unless it is
        turned off or its port is taken, else this server's own routes."""
        own = route_prefix(self.gateway, serverapp.connection_url)
        if self.kernel_port < 0:
            return own
        try:
            sock = listening_socket("127.0.0.1", self.kernel_port, backlog=128)
        except OSError as exc:
            log.warning("jupyter-vkeys: kernel_port %s unavailable (%s); kernels use %s",
                        self.kernel_port, exc, own)
            return own
        self.kernel_front = LeanServer(self.gateway, make_app(self.gateway, admin=False),
                                       proxy_routes(self.gateway))
        port = await self.kernel_front.listen(sock)
        return route_prefix(self.gateway, f"http://127.0.0.1:{port}")

    async def _on_contents_event(self, logger, schema_id, data) -> None:
        if data.get("action") == "rename" and getattr(self, "broker", None) is not None:
            self.broker.renamed(data.get("source_path", ""), data.get("path", ""))

    async def stop_extension(self) -> None:
        """Called by jupyter_server at shutdown: close the gateway cleanly."""
        set_active(None)
        restore_default(self.previous_provisioner)
        if self.hub_broker is not None:
            await self.hub_broker.server_stopped()
        if self.kernel_front is not None:
            self.kernel_front.stop()
        if self.gateway is not None:
            await self.gateway.stop()


def _stop_cleanly_on_sigint(serverapp: Any) -> None:
    """Make SIGINT stop the server the way SIGTERM does, with its cleanup (so
    :meth:`VKeysApp.stop_extension` revokes this server's kernel keys).

    JupyterHub's local spawners stop a server with SIGINT first. Without a terminal,
    jupyter_server leaves SIGINT to Python: a ``KeyboardInterrupt`` ends its loop and the
    process exits without cleanup (no extension is stopped, kernels are left to notice
    their parent is gone), so the keys were revoked only later, by the service's reaper.
    Called at the extension's start under a Hub; a handler the server set itself (an
    interactive terminal's "Shut down this Jupyter server?") is left alone."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return

    def stop(signum: int, frame: Any) -> None:
        serverapp.log.info("jupyter-vkeys: SIGINT: stopping the server with its cleanup")
        serverapp.stop(from_signal=True)

    signal.signal(signal.SIGINT, stop)


def _share_server_log(serverapp: Any) -> None:
    """Our log lines go out like the server's own, with its handlers and level."""
    ours = logging.getLogger("jupyter_vkeys")
    if not ours.handlers and serverapp is not None:
        for handler in serverapp.log.handlers:
            ours.addHandler(handler)
        ours.setLevel(serverapp.log.level)
