"""Widgets for notebooks: ``AdminPanel()`` for gateway admins, ``MyUsage()`` for
everyone. Both are thin ipywidgets views over plain controllers
(:class:`AdminController`, :class:`UsageController`) that call the gateway's API with
the notebook's own credentials (:func:`notebook_credentials`).

Needs the ``widgets`` extra (``pip install 'jupyter-vkeys[widgets]'``: ipywidgets and
Altair); the controllers need neither.
"""

from __future__ import annotations

from typing import Any

from .admin_controller import AdminController
from .credentials import Credentials, CredentialsError, notebook_credentials
from .usage_controller import UsageController

__all__ = ["AdminController", "AdminPanel", "Credentials", "CredentialsError", "MyUsage",
           "UsageController", "notebook_credentials"]


def __getattr__(name: str) -> Any:
    """The views import ipywidgets only when asked for."""
    if name == "AdminPanel":
        from .admin_view import AdminPanel
        return AdminPanel
    if name == "MyUsage":
        from .usage_view import MyUsage
        return MyUsage
    raise AttributeError(name)
