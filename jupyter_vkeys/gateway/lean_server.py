"""The standalone gateway's HTTP/1.1 front: data-plane calls without tornado's machinery.

:class:`LeanServer` is the lean HTTP server of :mod:`jupyter_vkeys.http.server` with
the gateway's limits: it hands each data-plane ``POST`` straight to
:class:`.proxy.ProxyCall`, every other request (admin API, health, models, 404s) to
the same tornado ``Application`` the Jupyter extension mounts (through
:class:`~jupyter_vkeys.http.tornado_bridge.TornadoBridge`), and renders the server's
refusals as JSON in the route's dialect.

Used by ``jupyter vkeys serve`` (:mod:`jupyter_vkeys.cli`) unless ``--server tornado``
is given, by the hub service, and by the Jupyter extension for its kernels' loopback
front; inside a Jupyter server tornado keeps the browser's socket and
:mod:`.dataplane` carries the calls.
"""

from __future__ import annotations

import asyncio

import tornado.web

from ..http.server import HttpServer, ProtocolError, ServerExchange, listening_socket
from ..http.tornado_bridge import TornadoBridge
from .core import VKeysGateway
from .errors import ApiError, neutral_body
from .proxy import ProxyCall

__all__ = ["LeanServer", "listening_socket"]


class LeanServer(HttpServer):
    """Serves one started gateway: its data-plane routes directly, the rest via tornado.

    Created after :meth:`VKeysGateway.start` by the CLI's ``serve`` (with every route)
    and by the Jupyter extension (a loopback front for kernels, without the admin
    API); :meth:`listen` starts accepting, :meth:`stop` stops. Limits and deadlines
    come from the gateway's traits (``max_head_bytes``, ``max_url_bytes``,
    ``head_timeout``, ``body_timeout``, ``idle_timeout``, ``max_connections``); the
    attributes of the same names may be changed while it runs.
    """

    def __init__(self, gateway: VKeysGateway, app: tornado.web.Application,
                 proxy_routes: dict[str, tuple[str, str]], *,
                 idle_timeout: float | None = None) -> None:
        super().__init__(
            max_head=gateway.max_head_bytes, max_url=gateway.max_url_bytes,
            max_body=gateway.max_body_bytes, head_timeout=gateway.head_timeout,
            body_timeout=gateway.body_timeout, max_connections=gateway.max_connections,
            idle_timeout=gateway.idle_timeout if idle_timeout is None else idle_timeout)
        self.gateway = gateway
        self.app = app
        self.proxy_routes = proxy_routes
        self.dialect_of = {path.rsplit("/v1/", 1)[0]: dialect
                           for path, (_, dialect) in proxy_routes.items()}

    def dialect_for(self, path: str) -> str:
        """The error dialect of ``path`` (Anthropic routes answer Anthropic errors)."""
        for prefix, dialect in self.dialect_of.items():
            if path.startswith(prefix):
                return dialect
        return "openai"

    # -- HttpServer ------------------------------------------------------------------------
    def serve(self, exchange: ServerExchange) -> asyncio.Task | None:
        """A data-plane ``POST``: a task running its :class:`ProxyCall`; anything else:
        through tornado (no task)."""
        request = exchange.request
        route = self.proxy_routes.get(request.url.partition("?")[0]) \
            if request.method == "POST" else None
        if route is None:
            TornadoBridge(exchange.conn, request).run(self.app)
            return None
        return exchange.conn.loop.create_task(
            ProxyCall(self.gateway, exchange, route[0], route[1]).run())

    def refuse(self, exchange: ServerExchange, error: ProtocolError) -> None:
        """A refusal made before any handler ran (413, 431, 408, a bad Host...): JSON in
        the dialect of the route its path names, and an access line."""
        request = exchange.request
        api_error = _api_error(error)
        dialect = self.dialect_for(request.url.partition("?")[0])
        exchange.start(error.status, [("content-type", "application/json"),
                                      *error.headers.items()])
        body = api_error.body(dialect)
        exchange.finish(body)
        self.count(request.method, request.url, error.status, 0.0, len(body))

    def refused_connection(self, error: ProtocolError) -> bytes:
        return neutral_body(_api_error(error))

    def count(self, method: str, url: str, status: int, seconds: float, size: int) -> None:
        self.gateway.telemetry.request(method, url, status, seconds, size)  # telemetry hook


def _api_error(error: ProtocolError) -> ApiError:
    """The gateway's error for one of the HTTP server's refusals."""
    return ApiError(error.status, error.kind, error.message, code=error.code,
                    headers=error.headers)
