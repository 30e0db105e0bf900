"""Make ``vkeys-provisioner`` the provisioner of the local kernels a server starts.

jupyter_server reads only ``ServerApp.jpserver_extensions`` from the
``jupyter_server_config.d`` files a package installs, so the extension cannot ship
``c.KernelProvisionerFactory.default_provisioner_name`` as config. Instead
:func:`use_vkeys_provisioner` sets that documented trait on jupyter_client's
:class:`~jupyter_client.provisioning.KernelProvisionerFactory` singleton, which every
kernel manager in the process asks for the provisioner of a kernelspec that names
none (``KernelManager.pre_start_kernel``). Kernels started by the server (sessions,
``POST /api/kernels``, restarts) and nbclient/papermill runs inside the server's
process all go through it. A kernelspec whose ``metadata.kernel_provisioner`` names
its own provisioner keeps it; :class:`ProvisionerNotice` says once per such kernel
start that it gets no virtual key.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from jupyter_client.provisioning import KernelProvisionerFactory

log = logging.getLogger("jupyter_vkeys")

PROVISIONER_NAME = "vkeys-provisioner"
KERNEL_ACTIONS = "https://events.jupyter.org/jupyter_server/kernel_actions/v1"


def user_default(serverapp: Any) -> str:
    """The default provisioner the user chose themselves (config or
    ``JUPYTER_DEFAULT_PROVISIONER_NAME``), or "" if they chose none."""
    section = serverapp.config.get("KernelProvisionerFactory", {})
    if "default_provisioner_name" in section:
        return str(section["default_provisioner_name"])
    return os.environ.get(KernelProvisionerFactory.default_provisioner_name_env, "")


def use_vkeys_provisioner(serverapp: Any) -> str | None:
    """Set the provisioner factory's default to ``vkeys-provisioner`` unless the user chose
    another default (then log that those kernels get no key). Called by the extension at
    link time, before the server creates its kernel manager. Returns the previous default
    (for :func:`restore_default`), or None if nothing was changed."""
    factory = KernelProvisionerFactory.instance(parent=serverapp)
    chosen = user_default(serverapp)
    if chosen and chosen != PROVISIONER_NAME:
        log.warning("jupyter-vkeys: the default kernel provisioner is configured as %r: "
                    "kernels started with it get no virtual key (set it to %r, or remove "
                    "it, to give every kernel its key)", chosen, PROVISIONER_NAME)
        return None
    previous = factory.default_provisioner_name
    factory.default_provisioner_name = PROVISIONER_NAME
    return previous


def restore_default(previous: str | None) -> None:
    """Put back the default replaced by :func:`use_vkeys_provisioner` (extension stop)."""
    if previous is not None and KernelProvisionerFactory.initialized():
        KernelProvisionerFactory.instance().default_provisioner_name = previous


class ProvisionerNotice:
    """Listens to the server's kernel action events; for a kernel started with another
    provisioner (named by its kernelspec), logs one line saying it gets no key."""

    def __init__(self, serverapp: Any) -> None:
        self.serverapp = serverapp

    def listen(self) -> None:
        """Called once at extension start. Registers the (core) schema if the kernel
        manager has not yet, then listens; never fails the extension's start."""
        from jupyter_events.schema_registry import SchemaRegistryException
        from jupyter_server import DEFAULT_EVENTS_SCHEMA_PATH

        logger = self.serverapp.event_logger
        try:
            logger.register_event_schema(DEFAULT_EVENTS_SCHEMA_PATH / "kernel_actions" / "v1.yaml")
        except SchemaRegistryException:
            pass  # already registered by the kernel manager
        try:
            logger.add_listener(schema_id=KERNEL_ACTIONS, listener=self._on_event)
        except Exception as exc:  # an older server: no notice, kernels unaffected
            log.debug("jupyter-vkeys: no kernel action events (%s)", exc)

    async def _on_event(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        if data.get("action") != "start" or data.get("status") != "success":
            return
        self.check(data.get("kernel_id", ""))

    def check(self, kernel_id: str) -> str:
        """Log (and return) the notice for ``kernel_id`` if its provisioner is not ours."""
        from .provisioner import VKeysProvisioner

        try:
            kernel = self.serverapp.kernel_manager.get_kernel(kernel_id)
        except Exception:
            return ""
        provisioner = getattr(kernel, "provisioner", None)
        if provisioner is None or isinstance(provisioner, VKeysProvisioner):
            return ""
        spec = getattr(kernel, "kernel_spec", None)
        named = (getattr(spec, "metadata", None) or {}).get("kernel_provisioner", {})
        name = named.get("provisioner_name") or type(provisioner).__name__
        message = (f"jupyter-vkeys: kernel {kernel_id} ({getattr(kernel, 'kernel_name', '')}) "
                   f"runs with provisioner {name!r}"
                   + (" named by its kernelspec" if named else "")
                   + ": it gets no virtual key and no gateway variables")
        log.warning(message)
        return message
