"""Runs a request the lean server read through a tornado ``Application``.

Used by the gateway's front (:class:`jupyter_vkeys.gateway.lean_server.LeanServer`)
for every request that is not a data-plane call (admin API, health, models, 404s), so
those routes behave the same as inside a Jupyter server, where tornado owns the socket.
"""

from __future__ import annotations

import asyncio
from typing import Callable

import tornado.httputil
import tornado.web
from tornado.concurrent import Future

from .server import Connection, ProtocolError, Request, ServerExchange, head


class TornadoBridge(tornado.httputil.HTTPConnection):
    """Runs one fully read request through the tornado ``Application`` and writes the
    answer on the lean connection (the admin API, health, models and 404s)."""

    def __init__(self, conn: Connection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.context = _Context(conn.transport)
        self._chunked = False
        self._bodyless = False
        self._keep_alive = request.keep_alive

    def run(self, app: tornado.web.Application) -> None:
        """Feed the request to ``app`` as tornado's own HTTP server would. What tornado
        refuses to take as a request (``HTTPInputError``: a header or query it finds
        invalid) is answered 400 (the server's ``refuse``), and the connection goes on."""
        request = self.request
        try:
            headers = tornado.httputil.HTTPHeaders()
            for name, value in request.items:
                headers.add(name, value)
            start_line = tornado.httputil.RequestStartLine(request.method, request.url,
                                                           "HTTP/" + request.version)
            delegate = app.start_request(None, self)
            delegate.headers_received(start_line, headers)
        except tornado.httputil.HTTPInputError as exc:
            self.conn.server.refuse(ServerExchange(self.conn, request), ProtocolError(
                400, "invalid_request", f"bad request: {exc}"))
            return
        if request.body:
            delegate.data_received(request.body)
        delegate.finish()

    # -- tornado.httputil.HTTPConnection -----------------------------------------------
    def set_close_callback(self, callback: Callable[[], None] | None) -> None:
        self.conn.on_close = callback

    def write_headers(self, start_line, headers, chunk: bytes | None = None) -> Future[None]:
        status = start_line.code
        lowered = {name.lower() for name in headers}
        bodyless = status in (204, 304) or 100 <= status < 200 or self.request.method == "HEAD"
        self._bodyless = bodyless  # (a HEAD answer's body is never sent)
        if "content-length" in lowered or bodyless:
            framing = b"\r\n"
        elif self.request.version == "1.1" and self._keep_alive:
            self._chunked = True
            framing = b"transfer-encoding: chunked\r\n\r\n"
        else:
            self._keep_alive = False
            framing = b"\r\n"
        if "connection" not in lowered:
            if not self._keep_alive:
                framing = b"connection: close\r\n" + framing
            elif self.request.version != "1.1":  # HTTP/1.0 keeps a connection only if told
                framing = b"connection: keep-alive\r\n" + framing
        pairs = [(name, value) for name, value in headers.get_all()
                 if name.lower() != "date"]
        self._send(head(status, pairs, framing) + self._frame(chunk))
        return self._drained()

    def write(self, chunk: bytes) -> Future[None]:
        self._send(self._frame(chunk))
        return self._drained()

    def finish(self) -> None:
        if self._chunked:
            self._send(b"0\r\n\r\n")
        self.conn.response_done(self._keep_alive)

    def _send(self, data: bytes) -> None:
        if data and not self.conn.transport.is_closing():  # a gone client: nothing to send
            self.conn.transport.write(data)

    def _frame(self, chunk: bytes | None) -> bytes:
        if not chunk or self._bodyless:
            return b""
        return b"%x\r\n%s\r\n" % (len(chunk), chunk) if self._chunked else chunk

    def _drained(self) -> Future[None]:
        future: Future[None] = Future()
        if self.conn.writing_paused:
            def done(_: asyncio.Future) -> None:
                if not future.done():
                    future.set_result(None)
            self.conn.drain = self.conn.drain or self.conn.loop.create_future()
            self.conn.drain.add_done_callback(done)
        else:
            future.set_result(None)
        return future


class _Context:
    """What tornado's ``HTTPServerRequest`` reads from a connection's context."""

    __slots__ = ("remote_ip", "protocol")

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self.remote_ip = peer[0] if isinstance(peer, tuple) else "127.0.0.1"
        self.protocol = "http"
