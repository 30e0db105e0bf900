"""The control plane: the admin REST API under ``{prefix}/api/``.

Routes (JSON in, JSON out, errors as ``{"error": {"message", "type"}}``):

- ``GET /health`` (no auth), ``GET /me`` (the calling virtual key),
- ``GET|POST /keys``, ``GET|PATCH /keys/{id}``, ``POST /keys/{id}/revoke``,
  ``POST /keys/{id}/rotate``,
- ``GET /policies``, ``GET|PUT|PATCH|DELETE /policies/{scope}``,
- ``GET /audit``.

The handler logic lives in mixins; who counts as an admin is decided by the
base class they are combined with (:class:`TokenAdminAuth` standalone, the
Jupyter server's own authentication in the extension), the way JupyterHub's
``HubAuthenticated`` mixes into any handler.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable

import orjson
import tornado.web

from .._version import __version__
from ..policy import PolicyError
from ..registry import InvalidKeyRequest, KeyNotFound
from ..store import public_view
from .core import VKeysGateway
from .dataplane import DataPlaneHandler, public_endpoint
from .errors import ApiError


class AdminError(Exception):
    """A control-plane failure: HTTP ``status`` and a message for the admin."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


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

    def reply(self, payload: Any, status: int = 200) -> None:
        """Write ``payload`` as JSON."""
        self.set_status(status)
        self.finish(orjson.dumps(payload))

    def fail(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        """Write an admin API error."""
        self.clear()
        self.set_status(status)
        self.set_header("content-type", "application/json")
        self.finish(orjson.dumps({"error": {"message": message, "type": kind}}))

    def run(self, action) -> None:
        """Run ``action(actor)`` with admin checks; map validation errors to 4xx."""
        try:
            actor = self.admin_actor()
            if self.gateway.registry is None:
                raise AdminError(503, "the gateway is starting; retry in a moment",
                                 "unavailable")
            action(actor)
        except AdminError as exc:
            self.fail(exc.status, exc.message, exc.kind)
        except KeyNotFound as exc:
            self.fail(404, str(exc), "not_found_error")
        except (InvalidKeyRequest, PolicyError, ValueError) as exc:
            self.fail(400, str(exc), "invalid_request_error")

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.finish(orjson.dumps({"error": {"message": f"{status_code} {self._reason}",
                                            "type": "api_error"}}))


class KeysMixin(AdminMixin):
    """``GET /keys`` (filters: owner, team, project, state) and ``POST /keys``."""

    def get(self) -> None:
        def action(actor: str) -> None:
            now = self.gateway.clock()
            wanted = {k: self.get_argument(k, None) for k in ("owner", "team", "project", "state",
                                                              "parent_id")}
            rows = []
            for record in self.gateway.registry.records.values():
                view = public_view(record)
                view["state"] = record.state(now)
                if all(v is None or str(view.get(k)) == v for k, v in wanted.items()):
                    rows.append(view)
            rows.sort(key=lambda r: r["created_at"])
            self.reply({"keys": rows})
        self.run(action)

    def post(self) -> None:
        def action(actor: str) -> None:
            record, token = self.gateway.registry.create(self.json_body(), actor=actor)
            view = self.gateway.key_report(record)
            view["key"] = token
            self.reply(view, 201)
        self.run(action)


class KeyMixin(AdminMixin):
    """``GET|PATCH /keys/{id}``."""

    def get(self, key_id: str) -> None:
        def action(actor: str) -> None:
            record = self.gateway.registry.get(key_id)
            if record is None:
                raise AdminError(404, f"no key with id {key_id!r}", "not_found_error")
            self.reply(self.gateway.key_report(record))
        self.run(action)

    def patch(self, key_id: str) -> None:
        def action(actor: str) -> None:
            record = self.gateway.registry.update(key_id, self.json_body(), actor=actor)
            self.reply(self.gateway.key_report(record))
        self.run(action)


class KeyActionMixin(AdminMixin):
    """``POST /keys/{id}/revoke`` and ``POST /keys/{id}/rotate`` (``{"grace_seconds": n}``)."""

    def post(self, key_id: str, verb: str) -> None:
        def action(actor: str) -> None:
            registry = self.gateway.registry
            if verb == "revoke":
                record = registry.revoke(key_id, actor=actor)
                self.reply(self.gateway.key_report(record))
                return
            grace = self.json_body().get("grace_seconds", 0)
            if isinstance(grace, bool) or not isinstance(grace, (int, float)):
                raise AdminError(400, "grace_seconds must be a number of seconds")
            record, token = registry.rotate(key_id, actor=actor, grace_seconds=float(grace))
            view = self.gateway.key_report(record)
            view["key"] = token
            self.reply(view)
        self.run(action)


class PoliciesMixin(AdminMixin):
    """``GET /policies``: every scope policy with its spend."""

    def get(self) -> None:
        def action(actor: str) -> None:
            scopes = sorted(self.gateway.policy.scope_policies)
            self.reply({"policies": [self.gateway.scope_report(s) for s in scopes]})
        self.run(action)


class PolicyMixin(AdminMixin):
    """``GET|PUT|PATCH|DELETE /policies/{scope}`` (scope: global, user:x, team:x, project:x)."""

    def get(self, scope: str) -> None:
        self.run(lambda actor: self.reply(self.gateway.scope_report(scope)))

    def put(self, scope: str) -> None:
        def action(actor: str) -> None:
            self.gateway.set_scope_policy(scope, self.json_body(), actor=actor)
            self.reply(self.gateway.scope_report(scope))
        self.run(action)

    def patch(self, scope: str) -> None:
        def action(actor: str) -> None:
            self.gateway.set_scope_policy(scope, self.json_body(), actor=actor, replace=False)
            self.reply(self.gateway.scope_report(scope))
        self.run(action)

    def delete(self, scope: str) -> None:
        def action(actor: str) -> None:
            self.gateway.set_scope_policy(scope, None, actor=actor)
            self.reply(self.gateway.scope_report(scope))
        self.run(action)


class AuditMixin(AdminMixin):
    """``GET /audit?since=<seq>&limit=<n>``: admin actions, oldest first."""

    def get(self) -> None:
        def action(actor: str) -> None:
            try:
                since = int(self.get_argument("since", "0"))
                limit = min(int(self.get_argument("limit", "1000")), 10000)
            except ValueError:
                raise AdminError(400, "since and limit must be integers") from None
            self.reply({"audit": self.gateway.store.audit_rows(since, limit)})
        self.run(action)


class HealthHandler(tornado.web.RequestHandler):
    """``GET /health``: liveness and which providers are real or fake (no secrets)."""

    def initialize(self, gateway: VKeysGateway) -> None:
        self.gateway = gateway

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
        try:
            record = self.authenticate()
        except ApiError as error:
            self.send_api_error(error)
            return
        self.finish(orjson.dumps(self.gateway.key_report(record)))


def key_api_handlers(prefix: str, gateway: VKeysGateway) -> list[tuple]:
    """Routes of ``/api`` that take no admin credential: health and ``/api/me``."""
    api = prefix + "/api"
    return [(api + r"/health", HealthHandler, {"gateway": gateway}),
            (api + r"/me", MeHandler, {"gateway": gateway, "dialect": "openai"})]


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
        (api + r"/keys", make(KeysMixin), init),
        (api + r"/keys/([^/]+)", make(KeyMixin), init),
        (api + r"/keys/([^/]+)/(revoke|rotate)", make(KeyActionMixin), init),
        (api + r"/policies", make(PoliciesMixin), init),
        (api + r"/policies/([^/]+)", make(PolicyMixin), init),
        (api + r"/audit", make(AuditMixin), init),
    ]
