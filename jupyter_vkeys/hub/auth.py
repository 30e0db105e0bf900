"""Hub authentication for the service's handlers: who is calling, and what they may do.

:class:`HubAuthBase` is the auth base class of the admin API under the Hub service
(combined with the admin mixins by :func:`~jupyter_vkeys.gateway.admin.admin_handlers`,
as the Jupyter extension combines them with ``JupyterHandler``) and of the service's
own routes (:mod:`.handlers`). It uses JupyterHub's own ``HubOAuth``: a Hub API token
(``Authorization: token <t>``, what single-user servers, their kernels and widgets send)
or the OAuth cookie of a browser that logged in through the Hub. The token's user model
is fetched once per request, asynchronously (the Hub's answer is cached by ``HubAuth``
for ``cache_max_age`` seconds), so a Hub round trip never blocks the data plane's loop.
"""

from __future__ import annotations

from typing import Any

import tornado.web
from jupyterhub.services.auth import HubOAuth, HubOAuthenticated

from ..gateway.admin import AdminError
from ..gateway.admin_reach import AdminReach
from .scopes import SCOPE_ADMIN, SCOPE_USE, HubCaller


class HubAuthBase(HubOAuthenticated, tornado.web.RequestHandler):
    """Base of every Hub-authenticated handler of the service."""

    hub_auth_class = HubOAuth
    caller: HubCaller | None = None
    login_hint = ("send a JupyterHub API token (Authorization: token "
                  "<JUPYTERHUB_API_TOKEN>) or log in through the Hub")

    def initialize(self, gateway: Any, **kwargs: Any) -> None:
        self.gateway = gateway
        for name, value in kwargs.items():
            setattr(self, name, value)

    @property
    def hub_auth(self) -> HubOAuth:
        return self.settings["vkeys_hub_auth"]

    @property
    def hub_scopes(self) -> None:
        """Every identified Hub user may reach the service; what they may do is decided by
        the custom scopes (:meth:`admin_actor`, :meth:`hub_user`)."""
        return None

    async def prepare(self) -> None:
        """Identify the caller before the handler method runs (async: the Hub's answer is
        awaited, not fetched with a blocking request)."""
        model = await self.hub_auth.get_user(self, sync=False)
        self.caller = HubCaller.from_model(model) if model else None
        self._hub_auth_user_cache = model or None

    def get_current_user(self) -> Any:
        return self._hub_auth_user_cache if hasattr(self, "_hub_auth_user_cache") else None

    def check_xsrf_cookie(self) -> None:
        """Token requests carry no cookie to forge; cookie requests are checked the Hub's
        way (HubOAuth's XSRF token)."""
        if getattr(self, "_token_authenticated", False):
            return
        return self.hub_auth.check_xsrf_cookie(self)

    def _who(self) -> HubCaller:
        if self.caller is None:
            raise AdminError(403, "not authenticated: send a JupyterHub API token "
                                  "(Authorization: token <JUPYTERHUB_API_TOKEN>) or log in "
                                  "through the Hub", "authentication_error")
        return self.caller

    def admin_actor(self) -> str:
        """Called by the admin mixins before any admin operation: the acting Hub user, if
        they hold an admin scope; else 403 saying which scope is missing."""
        caller = self._who()
        if not caller.is_admin:
            raise AdminError(403, f"{caller.kind} {caller.name!r} is not a jupyter-vkeys "
                                  f"admin: the admin API needs the Hub scope {SCOPE_ADMIN} "
                                  f"(or {SCOPE_ADMIN}!group=<group>); ask a hub admin",
                             "permission_error")
        return f"hub:{caller.name}"

    def admin_reach(self) -> AdminReach | None:
        """Admins of everything reach everything; group admins their groups' teams."""
        caller = self._who()
        return None if caller.admin_of_all else AdminReach(caller.admin_groups)

    def hub_user(self) -> HubCaller:
        """Called by the service's own routes: the caller, if they may use the gateway
        (``custom:vkeys:use``, or an admin scope); else 403."""
        caller = self._who()
        if caller.kind != "user":
            raise AdminError(403, f"{caller.kind} {caller.name!r}: only Hub users have "
                                  "kernel keys", "permission_error")
        if not caller.can_use():
            raise AdminError(403, f"user {caller.name!r} may not use jupyter-vkeys: the "
                                  f"token lacks the Hub scope {SCOPE_USE} (add it to "
                                  "c.Spawner.server_token_scopes and grant it to the user's "
                                  "roles)", "permission_error")
        return caller

    def get_login_url(self) -> str:
        """Browsers (a GET without a token) go through the Hub's OAuth; API callers get a
        403 in JSON instead of a redirect."""
        if self.request.method == "GET" and "json" not in \
                self.request.headers.get("Accept", ""):
            return super().get_login_url()
        raise tornado.web.HTTPError(403, "not authenticated: send a JupyterHub API token "
                                         "(Authorization: token <token>)")
