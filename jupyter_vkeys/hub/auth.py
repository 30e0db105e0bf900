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

import json
import secrets
from typing import Any

import tornado.web
from jupyterhub.services.auth import HubOAuth, HubOAuthenticated
from traitlets import Unicode

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


class SharedStateHubOAuth(HubOAuth):
    """``HubOAuth`` whose login states live in the replicas' shared Redis.

    JupyterHub keeps each OAuth login's state (the page to return to, the PKCE code
    verifier) in the memory of the process that sent the browser to the Hub, so a
    callback that a load balancer hands to another replica fails ("Code verifier
    required"). With ``c.VKeysGateway.state_url`` set, :func:`.service.run_service`
    uses this class instead: the state is stored under ``<prefix>oauth:<state id>`` for
    ``oauth_state_max_age`` seconds, read by whichever replica gets the callback, and
    deleted when the login completes. The browser's cookies are signed with the shared
    cookie secret, so the same cookie is good on every replica. Called by HubOAuth's
    own login handlers only (a login, not a data-plane call): synchronous round trips.
    """

    redis_url = Unicode("", help="The shared Redis (the gateway's state_url).")
    state_prefix = Unicode("{vkeys}:", help="Key prefix (the gateway's state_prefix).")

    def _redis(self) -> Any:
        client = getattr(self, "_shared_redis", None)
        if client is None:
            import redis

            client = self._shared_redis = redis.Redis.from_url(
                self.redis_url, socket_timeout=2, socket_connect_timeout=2)
        return client

    def _key(self, state_id: str) -> str:
        return f"{self.state_prefix}oauth:{state_id}"

    def _shared(self, action: Any) -> Any:
        """Run ``action(client)``; Redis trouble becomes a 503 that says what to do."""
        from redis.exceptions import RedisError

        try:
            return action(self._redis())
        except (RedisError, OSError) as exc:
            raise tornado.web.HTTPError(
                503, f"the service's shared state (Redis) did not answer "
                     f"({type(exc).__name__}); the Hub login cannot complete now, retry "
                     "shortly") from None

    def generate_state(self, next_url: str | None = None, **extra_state: Any) -> str:
        """A new login state, stored where every replica finds it; returns its id."""
        state_id = secrets.token_urlsafe(16)
        value = json.dumps({"next_url": next_url, **extra_state})
        self._shared(lambda r: r.set(self._key(state_id), value,
                                     ex=max(int(self.oauth_state_max_age), 1)))
        return state_id

    def _decode_state(self, state_id: str, /) -> dict[str, Any]:
        """The stored state of ``state_id`` (``{}`` when unknown or expired)."""
        if not state_id:
            return {}
        raw = self._shared(lambda r: r.get(self._key(state_id)))
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            return {}

    def clear_oauth_state(self, state_id: str) -> None:
        """Forget a completed login's state (on every replica)."""
        self._shared(lambda r: r.delete(self._key(state_id)))
