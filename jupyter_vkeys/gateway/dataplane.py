"""The data plane as tornado handlers: OpenAI- and Anthropic-compatible endpoints.

These are plain tornado handlers, deliberately outside Jupyter's own
authentication and XSRF checks: SDKs send ``Authorization: Bearer vk-...``,
which Jupyter would read as a server token. The virtual key is the only
credential accepted here.

Inside a Jupyter server tornado owns the socket, so :class:`ProxyHandler`
carries each call to :class:`.proxy.ProxyCall` through a :class:`TornadoExchange`.
The standalone server answers the same calls from its own front
(:mod:`.lean_server`) and uses these handlers for everything else.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

import orjson
import tornado.iostream
import tornado.web

from ..dialects import DIALECTS
from ..keys import KeyRecord
from ..policy import Refusal
from .core import VKeysGateway
from .errors import ApiError
from ..http.exchange import ClientGone, Exchange
from .proxy import ProxyCall, authenticate, error_response


def public_endpoint(method):
    """Mark a handler method as authenticating on its own (with a virtual key).

    Sets the marker Jupyter's ``@allow_unauthenticated`` sets, so a Jupyter server
    with ``allow_unauthenticated_access=False`` accepts these routes: SDK calls carry
    no Jupyter credentials, and every data-plane method checks the virtual key itself.
    """
    setattr(method, "__allow_unauthenticated", True)
    return method


class TornadoExchange(Exchange):
    """:class:`Exchange` over a tornado ``RequestHandler`` (created per call by
    :meth:`ProxyHandler.post`)."""

    __slots__ = ("handler", "body", "_started")

    def __init__(self, handler: tornado.web.RequestHandler) -> None:
        self.handler = handler
        self.body = handler.request.body
        self._started = False

    def header(self, name: str) -> str | None:
        return self.handler.request.headers.get(name)

    def header_items(self) -> Iterable[tuple[str, str]]:
        return self.handler.request.headers.get_all()

    @property
    def head_sent(self) -> bool:
        return self.handler._headers_written

    def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        handler = self.handler
        if self._started:  # an error replacing a response that never went out
            handler.clear()
        self._started = True
        handler.set_status(status)
        for name, value in headers:
            handler.set_header(name, value)

    async def write(self, data: bytes) -> None:
        handler = self.handler
        if not handler._headers_written:
            # tornado leaves Nagle's algorithm on for server connections: small stream
            # events would wait for the client's delayed ACK (measured: a 23 ms stream of
            # 1 ms-spaced events arrived in two reads, the second at the very end).
            stream = getattr(handler.request.connection, "stream", None)
            if stream is not None:
                stream.set_nodelay(True)
        handler.write(data)
        try:
            await handler.flush()
        except tornado.iostream.StreamClosedError:
            raise ClientGone() from None

    def finish(self, data: bytes = b"") -> None:
        handler = self.handler
        status = handler.get_status()
        if status in (204, 304) or status < 200:  # no body (tornado raises on b"" too)
            data = b""
        handler.finish(data or None)

    def abort(self) -> None:
        self.handler.request.connection.close()


class DataPlaneHandler(tornado.web.RequestHandler):
    """Shared plumbing of the data plane: key extraction and dialect errors."""

    dialect = "openai"

    def initialize(self, gateway: VKeysGateway, operation: str = "", dialect: str = "openai"
                   ) -> None:
        self.gateway = gateway
        self.operation = operation
        self.dialect = dialect

    def check_xsrf_cookie(self) -> None:
        """SDK calls carry a virtual key, not a browser session: no XSRF here."""

    def compute_etag(self) -> None:
        return None

    def set_default_headers(self) -> None:
        self.set_header("content-type", "application/json")

    def prepare(self) -> None:
        """The access log (tornado's, or the Jupyter server's, which read ``request.uri``)
        gets the path only: a query string may carry what a log must not (ids, keys
        pasted by mistake); the parsed arguments stay available."""
        self.request.uri = self.request.path

    def _request_summary(self) -> str:
        return f"{self.request.method} {self.request.path} ({self.request.remote_ip})"

    def authenticate(self) -> KeyRecord:
        """The caller's key record; raises a 401 :class:`ApiError` saying why not."""
        headers = self.request.headers
        return authenticate(self.gateway, DIALECTS[self.dialect].credential(
            headers.get("Authorization"), headers.get("x-api-key")))

    def key_or_refusal(self) -> KeyRecord | None:
        """The caller's key record, or None once the 401 saying why has been sent. Called
        first by the GET routes a virtual key opens (models, ``/api/me``...)."""
        try:
            return self.authenticate()
        except ApiError as error:
            self.send_api_error(error)
            return None

    def send_api_error(self, error: ApiError, request_id: str = "") -> None:
        """Write ``error`` in this route's dialect (nothing if the response already began)."""
        error_response(TornadoExchange(self), error, self.dialect, request_id)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado's own errors (405, bad framing...) in the dialect too."""
        reason = self._reason or "error"
        kind = {404: "not_found", 405: "invalid_request", 413: "too_large"}.get(
            status_code, "invalid_request" if status_code < 500 else "internal")
        message = f"{status_code} {reason}"
        if status_code == 405:
            allowed = [verb.upper() for verb in ("get", "post", "put", "patch", "delete")
                       if getattr(type(self), verb) is not getattr(tornado.web.RequestHandler,
                                                                   verb)]
            self.set_header("allow", ", ".join(allowed))
            message = (f"method {self.request.method} is not allowed on {self.request.path} "
                       f"(allowed: {', '.join(allowed) or 'none'})")
        self.finish(ApiError(status_code, kind, message).body(self.dialect))


class ProxyHandler(DataPlaneHandler):
    """``POST`` of one LLM operation, relayed to the model's provider."""

    _task: asyncio.Task | None = None

    def on_connection_close(self) -> None:
        """The client went away: stop waiting on the upstream (settlement still runs)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()

    @public_endpoint
    async def post(self) -> None:
        self._task = asyncio.current_task()
        try:
            await ProxyCall(self.gateway, TornadoExchange(self), self.operation,
                            self.dialect).run()
        finally:
            self._task = None


def callable_models(gateway: VKeysGateway, record: KeyRecord) -> list[tuple[str, str]]:
    """``(model, provider)`` of every named catalog model ``record`` may call and the
    gateway can route; for the ``/models`` routes."""
    names = []
    for entry in gateway.catalog.named_models():
        try:
            gateway.policy.resolve(record, entry.match)
        except Refusal:
            continue
        if gateway.route(entry.match) is not None:
            names.append((entry.match, entry.provider))
    return names


class ModelsHandler(DataPlaneHandler):
    """``GET .../v1/models``: the catalog's named models this key may call."""

    @public_endpoint
    def get(self) -> None:
        record = self.key_or_refusal()
        if record is None:
            return
        dialect = DIALECTS[self.dialect]
        data = [dialect.model_object(n, p) for n, p in callable_models(self.gateway, record)]
        self.finish(orjson.dumps(dialect.models_page(data)))


class ModelHandler(DataPlaneHandler):
    """``GET .../v1/models/{id}`` (``client.models.retrieve(id)`` in both SDKs): the model
    object of a catalog model this key may call, else 404 in the dialect."""

    @public_endpoint
    def get(self, model: str) -> None:
        record = self.key_or_refusal()
        if record is None:
            return
        for name, provider in callable_models(self.gateway, record):
            if name == model:
                self.finish(orjson.dumps(DIALECTS[self.dialect].model_object(name, provider)))
                return
        self.send_api_error(ApiError(
            404, "not_found", f"model {model!r} is not in this gateway's catalog or this key "
            "may not call it (GET .../v1/models lists the models it may call)",
            param="model"))


# Endpoints of the providers' APIs that this gateway does not relay (named in its 404s).
UNSUPPORTED = ("moderations", "files", "batches", "fine_tuning", "images", "audio",
               "assistants", "threads", "vector_stores", "uploads", "realtime", "containers",
               "evals", "conversations", "messages/batches", "skills")


class NotFoundHandler(DataPlaneHandler):
    """Every other path under the gateway's prefix, any method: 404 in the dialect of
    the path (Anthropic's under ``.../anthropic/``), naming what is served instead.
    Mounted last, after every route of the gateway."""

    def initialize(self, gateway: VKeysGateway, operation: str = "", dialect: str = "openai",
                   anthropic_prefix: str = "") -> None:
        super().initialize(gateway, operation, dialect)
        # (inside Jupyter the path starts with base_url, which the route table adds)
        if anthropic_prefix and anthropic_prefix in self.request.path:
            self.dialect = "anthropic"

    @public_endpoint
    def get(self, *args: str) -> None:
        self.not_found()

    post = put = patch = delete = head = options = get

    def not_found(self) -> None:
        """Answer 404, naming the provider endpoint this gateway does not relay."""
        path = self.request.path
        endpoint = path.partition("/v1/")[2]
        if any(endpoint == name or endpoint.startswith(name + "/") for name in UNSUPPORTED):
            message = (f"this gateway does not serve /v1/{endpoint}: it relays "
                       f"{DIALECTS[self.dialect].served}")
        else:
            message = f"no such route on this gateway: {self.request.method} {path}"
        self.send_api_error(ApiError(404, "not_found", message, code="not_found"))
