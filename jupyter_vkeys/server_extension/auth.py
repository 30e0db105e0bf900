"""Admin API authentication inside a Jupyter server.

The admin routes combine the shared handler mixins with :class:`JupyterAdminAuth`
(a ``JupyterHandler``): Jupyter's own identity provider authenticates, its
authorizer is asked for ``vkeys`` (resource) ``read``/``write``, and the user
must be a gateway admin (``c.VKeysApp.admin_users``; in a personal server with
none configured, its one user is the admin).
"""

from __future__ import annotations

from typing import Any, Callable

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from tornado import web

from ..gateway.admin import AdminError

AUTH_RESOURCE = "vkeys"


class JupyterAdminAuth(JupyterHandler):
    """Base class of the admin handlers when mounted in a Jupyter server."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, gateway: Any) -> None:
        self.gateway = gateway

    def admin_actor(self) -> str:
        """The acting Jupyter user, if a gateway admin; else :class:`AdminError` (403)."""
        user = self.current_user
        if user is None:
            raise AdminError(403, "not authenticated", "authentication_error")
        admins = self.settings.get("vkeys_admin_users") or set()
        if admins and user.username not in admins:
            raise AdminError(403, f"user {user.username!r} is not a jupyter-vkeys admin "
                                  "(c.VKeysApp.admin_users)", "permission_error")
        return f"jupyter:{user.username}"


def jupyter_admin_method(method: Callable) -> Callable:
    """Wrap an admin handler method with Jupyter's authentication and authorization."""
    return web.authenticated(authorized(method))
