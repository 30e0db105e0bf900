"""The kernel provisioner that gives every local kernel its own virtual key.

Registered as ``vkeys-provisioner`` under the ``jupyter_client.kernel_provisioners``
entry point and made the default of local kernels by the extension when jupyter_server
links it (:mod:`.provisioning`), so it sees every local kernel start: from notebooks,
``POST /api/sessions`` and ``POST /api/kernels``, restarts, nbclient or papermill in
the server's process. It extends :class:`LocalProvisioner` and changes only
the environment:

- ``pre_launch`` (start and restart): provider secrets removed; a child key,
  ``OPENAI_*``/``ANTHROPIC_*`` variables, ``VKEYS_URL`` and the gateway host in
  ``NO_PROXY`` added;
- ``cleanup(restart=False)``: the kernel's key is revoked.

Outside a server running the extension (no broker in this process) it still
strips secrets, injects nothing, and logs why.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

from jupyter_client.provisioning import LocalProvisioner

from . import kernel_keys
from .kernel_keys import active_broker, strip_secrets

log = logging.getLogger("jupyter_vkeys.kernels")


def _requesting_user() -> str:
    """The Jupyter user whose request started this kernel, if a request did."""
    try:
        from jupyter_server.base.call_context import CallContext

        handler = CallContext.get(CallContext.JUPYTER_HANDLER)
        user = getattr(handler, "current_user", None) if handler is not None else None
        return getattr(user, "username", "") or ""
    except Exception:  # outside a request, or an older server
        return ""


CELLS_EXTENSION_ARG = "--IPKernelApp.extra_extensions=jupyter_vkeys.kernel.cells"


def _is_ipykernel(spec: Any) -> bool:
    """Whether a kernelspec starts ipykernel (the cell-cost extension needs IPython)."""
    argv = getattr(spec, "argv", None) or []
    return any("ipykernel" in str(part) for part in argv[:4])


class VKeysProvisioner(LocalProvisioner):
    """A local kernel with its own virtual key in its environment."""

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Called by the kernel manager before each (re)start: build the environment."""
        env = dict(kwargs.get("env") or os.environ)
        broker = active_broker()
        if broker is None:
            log.warning("jupyter-vkeys: %s; kernel %s starts without a virtual key",
                        kernel_keys.NO_BROKER_REASON, self.kernel_id)
            kwargs["env"] = strip_secrets(env)
        else:
            launched = broker.launch_env(self.kernel_id, env, _requesting_user())
            # the Hub client (hub_broker) asks the service: an awaitable
            kwargs["env"] = await launched if inspect.isawaitable(launched) else launched
            if _is_ipykernel(self.kernel_spec):
                # cost per cell and %%vkeys dry_run (other languages: key and env only)
                extra = [a for a in kwargs.get("extra_arguments", []) if a != CELLS_EXTENSION_ARG]
                kwargs["extra_arguments"] = [*extra, CELLS_EXTENSION_ARG]
        return await super().pre_launch(**kwargs)

    async def cleanup(self, restart: bool = False) -> None:
        """Called by the kernel manager after the kernel stopped; revokes its key unless
        the kernel is restarting (a restart keeps the key)."""
        await super().cleanup(restart=restart)
        broker = active_broker()
        if broker is not None and not restart:
            stopped = broker.kernel_stopped(self.kernel_id)
            if inspect.isawaitable(stopped):
                await stopped
