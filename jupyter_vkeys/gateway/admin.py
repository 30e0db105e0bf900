"""The control plane: the admin REST API under ``{prefix}/api/``.

Routes (JSON in, JSON out, errors as ``{"error": {"message", "type"}}``):

- ``GET /health`` (no auth), ``GET /me`` and ``GET /me/calls`` (the calling virtual key),
- ``GET|POST /keys``, ``GET|PATCH /keys/{id}``, ``POST /keys/{id}/revoke``,
  ``POST /keys/{id}/rotate``,
- ``GET /policies``, ``GET|PUT|PATCH|DELETE /policies/{scope}``,
- ``GET /audit``,
- ``GET /openapi.json`` (no auth): the OpenAPI description (:mod:`.openapi`).

The handler logic lives in mixins; who counts as an admin is decided by the
base class they are combined with (:class:`TokenAdminAuth` standalone, the
Jupyter server's own authentication in the extension), the way JupyterHub's
``HubAuthenticated`` mixes into any handler.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Mapping

import orjson
import tornado.web

from .._version import __version__
from ..policy import PolicyError
from ..registry import InvalidKeyRequest, KeyNotFound
from ..runtime import ControlPlane, OperationError
from .admin_reach import AdminReach
from .core import VKeysGateway
from .dataplane import DataPlaneHandler, public_endpoint
from .openapi import OpenApiHandler


# Kept under its historical name: the Jupyter extension's auth raises it.
AdminError = OperationError


class TokenAdminAuth(tornado.web.RequestHandler):
    """Standalone admin authentication: ``Authorization: Bearer <admin token>``."""

    def initialize(self, gateway: VKeysGateway) -> None:
        self.gateway = gateway

    def check_xsrf_cookie(self) -> None:
        """Token-authenticated API: no browser cookies, no XSRF."""

    def admin_actor(self) -> str:
        """Who is acting, for the audit trail; raises :class:`AdminError` (401) if nobody."""
        auth = self.request.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        if not token or not hmac.compare_digest(token.encode(),
                                                self.gateway.admin_secret().encode()):
            raise AdminError(401, "admin API: missing or wrong admin token (Authorization: "
                                  "Bearer <token>; see <data_dir>/admin_token or "
                                  "VKEYS_ADMIN_TOKEN)", "authentication_error")
        return "admin-token"


class AdminMixin:
    """JSON plumbing shared by the admin handlers (mixed before an auth base class)."""

    gateway: VKeysGateway
    query_params: tuple[str, ...] = ()  # the query parameters the route takes
    # what an unauthenticated caller is told to send (the Hub service's base says its own)
    login_hint = "send the Jupyter server's token (Authorization: token <token>) or log in"

    def set_default_headers(self) -> None:
        self.set_header("content-type", "application/json")

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object, or an :class:`AdminError` (400)."""
        if not self.request.body:
            return {}
        try:
            data = orjson.loads(self.request.body)
        except orjson.JSONDecodeError as exc:
            raise AdminError(400, f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise AdminError(400, "request body must be a JSON object")
        return data

    def query(self, name: str) -> str | None:
        """The last value of query parameter ``name`` exactly as sent (tornado's
        ``get_argument`` would turn control characters into spaces and strip them, and
        so accept what the validation must see), or None."""
        values = self.request.query_arguments.get(name)
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise AdminError(400, f"query parameter {name} is not UTF-8") from None

    def reply(self, payload: Any, status: int = 200) -> None:
        """Write ``payload`` as JSON."""
        self.set_status(status)
        try:
            body = orjson.dumps(payload)
        except orjson.JSONEncodeError:  # rows saved by older versions may nest > 255 levels
            body = json.dumps(payload, default=str).encode()
        self.finish(body)

    def fail(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """Write an admin API error."""
        self.clear()
        self.set_status(status)
        self.set_header("content-type", "application/json")
        self.finish(orjson.dumps({"error": {"message": message, "type": kind}}))

    def reach(self) -> AdminReach | None:
        """What the acting admin may act on: None (everything) unless the auth base class
        (mixed in after this one) has an ``admin_reach()`` that limits it, as a Hub group
        admin's does. Called after :meth:`admin_actor` succeeded."""
        limited = getattr(self, "admin_reach", None)
        return limited() if limited is not None else None

    def check_key_reach(self, key_id: str, fields: Mapping[str, Any] | None = None) -> None:
        """Refuse (403) a key outside the admin's reach, or a change that would move it out
        (``fields["team"]``). An unknown key passes: the operation answers 404."""
        reach = self.reach()
        if reach is None:
            return
        record = self.gateway.registry.get(key_id)
        if record is not None and not reach.key(record):
            raise AdminError(403, f"key {key_id} is not one of {reach.describe()} that you "
                                  "administer", "permission_error")
        if fields and "team" in fields and not reach.key({"team": fields["team"]}):
            raise AdminError(403, f"team {str(fields['team'])[:60]!r} is not one you "
                                  f"administer ({reach.describe()})", "permission_error")

    def check_scope_reach(self, scope: str) -> None:
        """Refuse (403) a policy scope outside the admin's reach."""
        reach = self.reach()
        if reach is not None and not reach.scope(scope, self.gateway.registry.records.values()):
            raise AdminError(403, f"scope {scope[:80]!r} is outside {reach.describe()} that "
                                  "you administer", "permission_error")

    @property
    def control(self) -> ControlPlane:
        """The gateway's admin operations (validated before anything is written)."""
        return self.gateway.control

    def run(self, action) -> None:
        """Run ``action(actor)`` with admin checks; map validation errors to 4xx."""
        try:
            actor = self.admin_actor()
            if self.gateway.registry is None:
                raise AdminError(503, "the gateway is starting; retry in a moment",
                                 "unavailable")
            unknown = sorted(set(self.request.query_arguments) - set(self.query_params))
            if unknown:
                allowed = ", ".join(self.query_params) or "none"
                raise AdminError(400, f"unknown query parameters {unknown[:5]!r}; this "
                                      f"route takes: {allowed}")
            action(actor)
        except AdminError as exc:
            self.fail(exc.status, exc.message, exc.kind)
        except KeyNotFound as exc:
            self.fail(404, str(exc), "not_found_error")
        except (InvalidKeyRequest, PolicyError, ValueError) as exc:
            self.fail(400, str(exc), "invalid_request_error")

    def get_login_url(self) -> str:
        """Called by ``web.authenticated`` (the Jupyter extension's admin methods) for a
        caller nobody authenticated: a JSON API answers 403, never a redirect to a login
        page (which a client following redirects would read as 200)."""
        raise tornado.web.HTTPError(403, f"not authenticated: {self.login_hint}")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's and Jupyter's own refusals (405, Jupyter's 403 before the handler
        runs) in the admin API's error shape, saying why where they say it."""
        message = f"{status_code} {self._reason}"
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        detail = ""
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            try:
                detail = exc.log_message % exc.args if exc.args else exc.log_message
            except (TypeError, ValueError):
                detail = exc.log_message
        elif status_code == 403 and self.current_user is None:
            detail = f"not authenticated: {self.login_hint}"
        if detail:
            message += f": {detail}"
        kind = {401: "authentication_error", 403: "permission_error"}.get(status_code,
                                                                          "api_error")
        self.finish(orjson.dumps({"error": {"message": message, "type": kind}}))


class KeysMixin(AdminMixin):
    """``GET /keys`` (filters: owner, team, project, state, parent_id) and ``POST /keys``."""

    query_params = ("owner", "team", "project", "state", "parent_id")

    def get(self) -> None:
        def action(actor: str) -> None:
            wanted = {k: self.query(k) for k in self.query_params}
            listing = self.control.list_keys(wanted)
            reach = self.reach()
            if reach is not None:
                listing["keys"] = [row for row in listing["keys"] if reach.key(row)]
            self.reply(listing)
        self.run(action)

    def post(self) -> None:
        def action(actor: str) -> None:
            body = self.json_body()
            reach = self.reach()
            if reach is not None and not reach.key({"team": body.get("team", "")}):
                raise AdminError(403, f"a key you create must have a team you administer "
                                      f"({reach.describe()}); set \"team\"",
                                 "permission_error")
            self.reply(self.control.create_key(body, actor=actor), 201)
        self.run(action)


class KeyMixin(AdminMixin):
    """``GET|PATCH /keys/{id}``."""

    def get(self, key_id: str) -> None:
        def action(actor: str) -> None:
            self.check_key_reach(key_id)
            self.reply(self.control.get_key(key_id))
        self.run(action)

    def patch(self, key_id: str) -> None:
        def action(actor: str) -> None:
            body = self.json_body()
            self.check_key_reach(key_id, body)
            self.reply(self.control.update_key(key_id, body, actor=actor))
        self.run(action)


class KeyActionMixin(AdminMixin):
    """``POST /keys/{id}/revoke`` and ``POST /keys/{id}/rotate`` (``{"grace_seconds": n}``)."""

    def post(self, key_id: str, verb: str) -> None:
        def action(actor: str) -> None:
            self.check_key_reach(key_id)
            if verb == "revoke":
                self.reply(self.control.revoke_key(key_id, actor=actor))
            else:
                self.reply(self.control.rotate_key(key_id, self.json_body(), actor=actor))
        self.run(action)


class PoliciesMixin(AdminMixin):
    """``GET /policies``: every scope policy with its spend."""

    def get(self) -> None:
        def action(actor: str) -> None:
            listing = self.control.list_policies()
            reach = self.reach()
            if reach is not None:
                records = list(self.gateway.registry.records.values())
                listing["policies"] = [p for p in listing["policies"]
                                       if reach.scope(p.get("scope", ""), records)]
            self.reply(listing)
        self.run(action)


class PolicyMixin(AdminMixin):
    """``GET|PUT|PATCH|DELETE /policies/{scope}`` (scope: global, user:x, team:x, project:x)."""

    def _scoped(self, scope: str, operation) -> None:
        def action(actor: str) -> None:
            self.check_scope_reach(scope)
            self.reply(operation(actor))
        self.run(action)

    def get(self, scope: str) -> None:
        self._scoped(scope, lambda actor: self.control.get_policy(scope))

    def put(self, scope: str) -> None:
        self._scoped(scope, lambda actor: self.control.set_policy(scope, self.json_body(),
                                                                  actor=actor))

    def patch(self, scope: str) -> None:
        self._scoped(scope, lambda actor: self.control.set_policy(
            scope, self.json_body(), actor=actor, replace=False))

    def delete(self, scope: str) -> None:
        self._scoped(scope, lambda actor: self.control.delete_policy(scope, actor=actor))


class AuditMixin(AdminMixin):
    """``GET /audit?since=<seq>&limit=<n>``: admin actions, oldest first."""

    query_params = ("since", "limit")

    def get(self) -> None:
        def action(actor: str) -> None:
            reach = self.reach()
            if reach is not None:
                raise AdminError(403, "the audit trail is for admins of everything; you "
                                      f"administer {reach.describe()} (ask for "
                                      "custom:vkeys:admin without a group filter)",
                                 "permission_error")
            self.reply(self.control.audit(self.query("since"), self.query("limit")))
        self.run(action)


class HealthHandler(tornado.web.RequestHandler):
    """``GET /health``: liveness and which providers are real or fake (no secrets)."""

    def initialize(self, gateway: VKeysGateway) -> None:
        self.gateway = gateway

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Another method than GET (405), in the API's JSON error shape, not HTML."""
        self.set_header("content-type", "application/json")
        self.finish(orjson.dumps({"error": {
            "message": f"{status_code} {self._reason}: /api/health answers GET only",
            "type": "invalid_request_error"}}))

    @public_endpoint
    def get(self) -> None:
        gw = self.gateway
        providers = {name: ("fake" if gw.is_fake(gw.transports.get(name)) else
                            "configured" if name in gw.transports else "no credentials")
                     for name in gw.provider_configs}
        self.set_header("content-type", "application/json")
        self.finish(orjson.dumps({"status": "ok", "version": __version__,
                                  "providers": providers, "keys": len(gw.registry.records)}))


class MeHandler(DataPlaneHandler):
    """``GET /me``: the calling virtual key's record, limits and spend."""

    @public_endpoint
    def get(self) -> None:
        record = self.key_or_refusal()
        if record is None:
            return
        self.finish(orjson.dumps(self.gateway.control.me(record)))


class MeCallsHandler(DataPlaneHandler):
    """``GET /me/calls?limit=<n>``: the calling key's owner's recent calls (the
    ``MyUsage`` widget's recent calls, cost per notebook and per cell)."""

    @public_endpoint
    def get(self) -> None:
        record = self.key_or_refusal()
        if record is None:
            return
        values = self.request.query_arguments.get("limit")
        unknown = sorted(set(self.request.query_arguments) - {"limit"})
        self.set_header("content-type", "application/json")
        try:
            if unknown:
                raise AdminError(400, f"unknown query parameters {unknown[:5]!r}; this route "
                                      "takes: limit")
            limit = values[-1].decode("utf-8", "replace") if values else None
            self.finish(orjson.dumps(self.gateway.control.my_calls(record, limit)))
        except AdminError as exc:
            self.set_status(exc.status)
            self.finish(orjson.dumps({"error": {"message": exc.message, "type": exc.kind}}))


def key_api_handlers(prefix: str, gateway: VKeysGateway) -> list[tuple]:
    """Routes of ``/api`` that take no admin credential: health and ``/api/me``."""
    api = prefix + "/api"
    return [(api + r"/health", HealthHandler, {"gateway": gateway}),
            (api + r"/me", MeHandler, {"gateway": gateway, "dialect": "openai"}),
            (api + r"/me/calls", MeCallsHandler, {"gateway": gateway, "dialect": "openai"})]


def admin_handlers(prefix: str, gateway: VKeysGateway, auth_base: type = TokenAdminAuth,
                   decorate: Callable[[Callable], Callable] | None = None) -> list[tuple]:
    """Admin routes whose handlers combine the mixins with ``auth_base``; ``decorate``
    wraps each HTTP method (the Jupyter extension adds its auth decorators there)."""
    def make(mixin: type) -> type:
        methods = {}
        if decorate is not None:
            methods = {verb: decorate(getattr(mixin, verb)) for verb in
                       ("get", "post", "put", "patch", "delete") if verb in vars(mixin)}
        return type(mixin.__name__.replace("Mixin", "Handler"), (mixin, auth_base), methods)

    api = prefix + "/api"
    init = {"gateway": gateway}
    return [
        (api + r"/openapi.json", OpenApiHandler),
        (api + r"/keys", make(KeysMixin), init),
        (api + r"/keys/([^/]+)", make(KeyMixin), init),
        (api + r"/keys/([^/]+)/(revoke|rotate)", make(KeyActionMixin), init),
        (api + r"/policies", make(PoliciesMixin), init),
        (api + r"/policies/([^/]+)", make(PolicyMixin), init),
        (api + r"/audit", make(AuditMixin), init),
    ]
