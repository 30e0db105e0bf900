"""The routes of one gateway, and a standalone application around them.

:func:`gateway_handlers` is what both hosts mount: the standalone server via
:func:`make_app`, the Jupyter server extension under its ``base_url``.
:func:`proxy_routes` lists the data-plane calls, which the standalone server's
lean front (:mod:`.lean_server`) answers before tornado sees them.
"""

from __future__ import annotations

from typing import Callable

import tornado.log
import tornado.web

from ..dialects import DIALECTS
from .admin import TokenAdminAuth, admin_handlers, key_api_handlers
from .cell_api import cell_handlers
from .core import VKeysGateway
from .dataplane import ModelHandler, ModelsHandler, NotFoundHandler, ProxyHandler
from .telemetry_api import telemetry_handlers



def route_prefix(gateway: VKeysGateway, base_url: str = "") -> str:
    """``base_url`` + the gateway's prefix, without a trailing slash: every route starts so."""
    return base_url.rstrip("/") + "/" + gateway.prefix.strip("/")


def proxy_routes(gateway: VKeysGateway, base_url: str = "") -> dict[str, tuple[str, str]]:
    """``{path: (operation, dialect)}`` of every data-plane POST route."""
    prefix = route_prefix(gateway, base_url)
    return {f"{prefix}/{dialect.name}/v1/{op.route}": (op.name, dialect.name)
            for dialect in DIALECTS.values() for op in dialect.operations}


def key_handlers(gateway: VKeysGateway, base_url: str = "") -> list[tuple]:
    """Every route a virtual key opens (data plane, models, ``/api/me``, ``/api/cells``,
    ``/api/estimate``, health): what a kernel needs, and no admin route."""
    prefix = route_prefix(gateway, base_url)
    routes: list[tuple] = [
        (path, ProxyHandler, {"gateway": gateway, "operation": operation, "dialect": dialect})
        for path, (operation, dialect) in proxy_routes(gateway, base_url).items()]
    for name in DIALECTS:
        routes.append((f"{prefix}/{name}/v1/models", ModelsHandler,
                       {"gateway": gateway, "dialect": name}))
        routes.append((f"{prefix}/{name}/v1/models/(.+)", ModelHandler,
                       {"gateway": gateway, "dialect": name}))
    return routes + key_api_handlers(prefix, gateway) + cell_handlers(prefix, gateway)


def fallback_handlers(gateway: VKeysGateway, base_url: str = "") -> list[tuple]:
    """The catch-all of the prefix (JSON 404 in the path's dialect): mounted after every
    other route of the gateway, in both hosts."""
    prefix = route_prefix(gateway, base_url)
    return [(prefix + r"(?:/.*)?", NotFoundHandler,
             {"gateway": gateway, "anthropic_prefix": prefix + "/anthropic/"})]


def gateway_handlers(gateway: VKeysGateway, *, base_url: str = "",
                     admin_auth: type = TokenAdminAuth,
                     admin_decorate: Callable[[Callable], Callable] | None = None) -> list[tuple]:
    """All data-plane and admin routes under ``base_url + gateway.prefix``, then the
    prefix's catch-all."""
    prefix = route_prefix(gateway, base_url)
    # telemetry hook: /metrics and /api/ready (never on the kernels' loopback front)
    telemetry = telemetry_handlers(prefix, gateway, None if admin_auth is TokenAdminAuth
                                   else admin_auth, admin_decorate)
    return key_handlers(gateway, base_url) + telemetry + admin_handlers(
        prefix, gateway, admin_auth, admin_decorate) + fallback_handlers(gateway, base_url)


def log_request(handler: tornado.web.RequestHandler) -> None:
    """The standalone application's ``log_function``: the gateway's access line (see
    :mod:`..telemetry.access_log`) of a request tornado answered. Data-plane calls are
    logged from their finished call record instead, so each request has one line."""
    if isinstance(handler, ProxyHandler):
        return
    request = handler.request
    gateway = getattr(handler, "gateway", None)
    telemetry = getattr(gateway, "telemetry", None)
    if telemetry is None:  # a handler without a gateway (tornado's own error handler)
        status = handler.get_status()
        log = tornado.log.access_log.info if status < 400 else \
            tornado.log.access_log.warning if status < 500 else tornado.log.access_log.error
        log("%d %s %s %.2fms", status, request.method, request.path,
            1000.0 * request.request_time())
        return
    telemetry.request(request.method, request.path, handler.get_status(),
                      request.request_time(), _bytes_written(handler))


def _bytes_written(handler: tornado.web.RequestHandler) -> int:
    """The body length tornado sent (its content-length), 0 if unknown."""
    try:
        return int(handler._headers.get("Content-Length", 0))
    except (AttributeError, ValueError, TypeError):
        return 0


def make_app(gateway: VKeysGateway, *, admin: bool = True, routes: list[tuple] | None = None,
             **settings) -> tornado.web.Application:
    """A tornado application serving one started gateway: every route (``admin=False``:
    only the routes a virtual key opens), or ``routes`` given by the host (the Hub
    service adds its own) with extra tornado ``settings``."""
    if routes is None:
        routes = gateway_handlers(gateway) if admin else \
            key_handlers(gateway) + fallback_handlers(gateway)
    fallback = fallback_handlers(gateway)[0]
    return tornado.web.Application(routes, compress_response=False, log_function=log_request,
                                   default_handler_class=fallback[1],
                                   default_handler_args=fallback[2], **settings)
