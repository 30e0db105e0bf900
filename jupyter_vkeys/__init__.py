"""jupyter-vkeys: a Jupyter-native LLM gateway with virtual keys, budgets and a warehouse.

In a notebook: ``jupyter_vkeys.me()`` (or ``%load_ext jupyter_vkeys`` then
``%vkeys``) shows the kernel's key, limits, spend and when each window resets. Elsewhere:
:class:`jupyter_vkeys.gateway.VKeysGateway` runs a gateway and
:mod:`jupyter_vkeys.warehouse` reads its data.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__", "estimate", "load_ipython_extension", "me"]


def me(show: bool | None = None) -> Any:
    """This kernel's virtual key, limits and spend (from the gateway's ``/api/me``), as a
    report that renders itself (rich HTML in JupyterLab, text elsewhere); ``show=True``
    displays it at once. Raises :class:`jupyter_vkeys.kernel.VKeysError` saying why and
    what to do when there is no key, the gateway is down or the key is refused."""
    from .kernel import me as _me
    return _me(show=show)


def estimate(model: str, messages: list | None = None, max_tokens: int | None = None,
             **params: Any) -> Any:
    """What one call would cost on ``model`` without making it: input tokens, expected and
    worst-case cost, and whether this kernel key's limits allow it (see
    :func:`jupyter_vkeys.kernel.cells.estimate`)."""
    from .kernel.cells import estimate as _estimate
    return _estimate(model, messages, max_tokens, **params)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_vkeys``: registers ``%vkeys`` (report, ``quiet``/``loud``) and
    ``%%vkeys dry_run``, and the cost line under cells (kernels the vkeys provisioner
    starts load this already)."""
    from .kernel.cells import load_ipython_extension as load_cells
    load_cells(ipython)


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    """Entry point jupyter_server uses to load :class:`~.server_extension.VKeysApp`."""
    from .server_extension import VKeysApp
    return [{"module": "jupyter_vkeys.server_extension", "app": VKeysApp}]
