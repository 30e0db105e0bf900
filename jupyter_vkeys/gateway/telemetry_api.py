"""The tornado handlers of ``GET {prefix}/metrics`` and ``GET {prefix}/api/ready``.

:func:`telemetry_handlers` is called by :func:`.app.gateway_handlers`
(both hosts; never the kernels' loopback front, which mounts only
``key_handlers``). On the standalone server ``/metrics`` is public; inside
Jupyter it takes the admin API's authentication (``auth_base`` and
``decorate``) unless ``c.VKeysGateway.metrics_public`` is set. ``/api/ready``
is public everywhere, like ``/api/health``.
"""

from __future__ import annotations

from typing import Callable

import orjson
import tornado.web

from ..telemetry.metrics import CONTENT_TYPE
from .admin import AdminError
from .core import VKeysGateway

__all__ = ["telemetry_handlers", "ReadyHandler"]


def _public(method: Callable) -> Callable:
    """Jupyter's ``@allow_unauthenticated`` marker (see ``dataplane.public_endpoint``)."""
    setattr(method, "__allow_unauthenticated", True)
    return method


class _MetricsMixin:
    """``GET /metrics``: the Prometheus text format of the gateway's registry."""

    gateway: VKeysGateway
    needs_admin = False

    def initialize(self, gateway: VKeysGateway) -> None:
        self.gateway = gateway

    def check_xsrf_cookie(self) -> None:
        """A GET for scrapers: no XSRF."""

    def get_login_url(self) -> str:
        """Called by ``web.authenticated`` for a caller nobody authenticated: a scraper
        gets a 403 rather than a redirect to a login page (which reads as 200)."""
        raise tornado.web.HTTPError(403, "not authenticated: send the Jupyter server's "
                                         "token (Authorization: token <token>)")

    def write_error(self, status_code: int, **kwargs) -> None:
        """Refusals made before :meth:`get` runs, as JSON saying why."""
        exc = (kwargs.get("exc_info") or (None, None, None))[1]
        message = getattr(exc, "log_message", None) or f"{status_code} {self._reason}"
        self.set_header("content-type", "application/json")
        self.finish(orjson.dumps({"error": {"message": message, "type": "permission_error"
                                            if status_code == 403 else "api_error"}}))

    def get(self) -> None:
        if self.needs_admin:
            try:
                self.admin_actor()
            except AdminError as exc:
                self.set_status(exc.status)
                self.set_header("content-type", "application/json")
                self.finish(orjson.dumps({"error": {"message": exc.message, "type": exc.kind}}))
                return
        metrics = self.gateway.telemetry.metrics
        if metrics is None:
            self.set_status(404)
            self.set_header("content-type", "application/json")
            self.finish(orjson.dumps({"error": {
                "message": "metrics are off on this gateway (c.VKeysGateway.metrics = False)",
                "type": "not_found_error"}}))
            return
        self.set_header("content-type", CONTENT_TYPE)
        self.set_header("cache-control", "no-store")
        self.finish(metrics.exposition())


class ReadyHandler(tornado.web.RequestHandler):
    """``GET /api/ready``: 200 while ready, else 503 naming each failing part."""

    def initialize(self, gateway: VKeysGateway) -> None:
        self.gateway = gateway

    def check_xsrf_cookie(self) -> None:
        """A probe: no XSRF."""

    @_public
    def get(self) -> None:
        failing = self.gateway.telemetry.readiness.check(self.gateway)
        self.set_header("content-type", "application/json")
        self.set_header("cache-control", "no-store")
        if failing:
            self.set_status(503)
            self.set_header("retry-after", "1")
            self.finish(orjson.dumps({"status": "unavailable", "failing": failing,
                                      "error": {"message": "not ready: " + "; ".join(
                                          f"{part}: {why}" for part, why in failing.items()),
                                          "type": "unavailable"}}))
            return
        self.finish(orjson.dumps({"status": "ready"}))


def telemetry_handlers(prefix: str, gateway: VKeysGateway, auth_base: type | None = None,
                       decorate: Callable[[Callable], Callable] | None = None) -> list[tuple]:
    """The two routes under ``prefix``. ``auth_base``/``decorate`` are the admin API's
    (given by the Jupyter host; the standalone server passes neither)."""
    init = {"gateway": gateway}
    if auth_base is None or gateway.metrics_public:
        def get(self) -> None:  # a function of its own: the marker must not leak to others
            _MetricsMixin.get(self)
        metrics = type("MetricsHandler", (_MetricsMixin, tornado.web.RequestHandler),
                       {"get": _public(get)})
    else:
        # Jupyter's authentication (``decorate``), then admin_actor: 403 to anyone but a
        # gateway admin (get_login_url: a 403, never a redirect to the login page).
        get = decorate(_MetricsMixin.get) if decorate is not None else _MetricsMixin.get
        metrics = type("MetricsHandler", (_MetricsMixin, auth_base),
                       {"get": get, "needs_admin": True})
    return [(prefix + "/metrics", metrics, init), (prefix + "/api/ready", ReadyHandler, init)]
