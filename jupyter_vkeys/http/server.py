"""A lean HTTP/1.1 server on an asyncio Protocol, with its limits and deadlines.

Measured on the benchmark machine, tornado's server side (HTTP1Connection,
IOStream, HTTPHeaders, RequestHandler) was about 40% of the gateway's CPU per
call. This server parses requests with ``httptools`` and hands each fully read
request to its owner's :meth:`HttpServer.serve` with a :class:`ServerExchange`
to answer on; it knows nothing of keys, money or dialects. The gateway's front
(:class:`jupyter_vkeys.gateway.lean_server.LeanServer`) subclasses it: data-plane
calls go to the call path, everything else to a tornado ``Application`` through
:mod:`.tornado_bridge`.

Requests on one connection are answered in order (pipelined ones wait their
turn); reading pauses while too many wait. Bodies over ``max_body`` are refused
with 413 as soon as their declared length is known, and the connection is closed
without reading them. Heads over ``max_head`` get 431 however they are split into
packets, targets over ``max_url`` 414; a head or body not received within
``head_timeout`` / ``body_timeout`` of its start gets 408; idle keep-alive
connections close after ``idle_timeout``; past ``max_connections`` a new
connection gets 503. ``Upgrade`` and ``CONNECT`` are refused (400), as is a
missing, repeated or invalid ``Host`` (400, and the connection goes on). Every
refusal is a :class:`ProtocolError` that the owner renders
(:meth:`HttpServer.refuse`); one that ends the connection sends FIN and drops
what still arrives for a moment, so the client reads the answer rather than a
reset.

This is what the front conformance suite (tests/test_front_conformance.py) tests.
"""

from __future__ import annotations

import asyncio
import http
import logging
import re
import select
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import httptools

from .exchange import ClientGone, Exchange

log = logging.getLogger("jupyter_vkeys.http")

_MAX_QUEUED = 16  # pipelined requests held before reading pauses
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, cached per status."""
    line = _STATUS_LINES.get(status)
    if line is None:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        line = _STATUS_LINES[status] = f"HTTP/1.1 {status} {reason}\r\n".encode()
    return line


_date_cache = [0, b""]


def _date_header() -> bytes:
    """The ``date:`` header line, formatted once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = b"date: " + time.strftime(
            "%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode() + b"\r\n"
    return _date_cache[1]


@dataclass(slots=True)
class Request:
    """One fully read request, waiting its turn on its connection (``refusal``: a
    :class:`ProtocolError` to answer instead of serving it)."""

    method: str
    url: str
    version: str
    items: list[tuple[str, str]]
    body: bytes
    keep_alive: bool
    refusal: ProtocolError | None = None


class ProtocolError(Exception):
    """A request the server refuses before its owner sees it (413, 431, 408, a bad Host,
    malformed HTTP...). ``kind`` is the class of refusal (``invalid_request``,
    ``too_large``, ``timeout``, ``unavailable``), which the owner's :meth:`HttpServer.refuse`
    renders in the client's format; ``code`` and ``headers`` go with it."""

    def __init__(self, status: int, kind: str, message: str, *, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.code = code
        self.headers = headers or {}


def listening_socket(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """A bound, listening, non-blocking TCP socket (``port`` 0 picks a free one).

    Called by whoever starts a server: the CLI's ``serve`` (for either front) and the
    Jupyter extension's loopback front for kernels."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """Accepts connections and enforces their limits and deadlines; its owner answers.

    A subclass provides :meth:`serve` (answer one fully read request), :meth:`refuse`
    (render a :class:`ProtocolError`), :meth:`refused_connection` (the body of the 503
    past ``max_connections``) and may override :meth:`count` (one finished request,
    for an access log). :meth:`listen` starts accepting, :meth:`stop` stops. The limit
    and deadline attributes may be changed while it runs.
    """

    def __init__(self, *, max_head: int, max_url: int, max_body: int, head_timeout: float,
                 body_timeout: float, idle_timeout: float, max_connections: int) -> None:
        self.max_head = max_head
        self.max_url = max_url
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.connections: set[Connection] = set()
        self.lingering: set[Connection] = set()
        self.server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    # -- what the owner provides ---------------------------------------------------------
    def serve(self, exchange: ServerExchange) -> asyncio.Task | None:
        """Answer ``exchange.request`` (called once per request, in order on its
        connection). Return the task answering it, which the connection cancels if the
        client leaves, or None if the answer is under way without one."""
        raise NotImplementedError

    def refuse(self, exchange: ServerExchange, error: ProtocolError) -> None:
        """Answer ``error`` on ``exchange`` (start and finish it)."""
        raise NotImplementedError

    def refused_connection(self, error: ProtocolError) -> bytes:
        """The JSON body of the 503 a connection past ``max_connections`` gets (no request
        has been read, so nothing says which client format it speaks)."""
        return error.message.encode()

    def count(self, method: str, url: str, status: int, seconds: float, size: int) -> None:
        """A request the server answered itself (a refusal): for the owner's access log."""

    # -- running -----------------------------------------------------------------------------
    async def listen(self, sock: socket.socket) -> int:
        """Accept connections on the bound, listening socket ``sock``; returns its port."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Connection(self), sock=sock)
        self._sweeper = loop.call_later(self._sweep_every(), self.sweep_idle)
        return sock.getsockname()[1]

    def _sweep_every(self) -> float:
        shortest = min(self.idle_timeout, self.head_timeout, self.body_timeout)
        return min(max(shortest / 4, 0.05), 30.0)

    def sweep_idle(self) -> None:
        """Enforce every connection's deadlines (:meth:`Connection.expire`). Runs on its
        own every quarter of the shortest deadline (at most 30 s): one timer for all
        connections rather than one per request."""
        now = time.monotonic()
        for conn in list(self.connections):
            conn.expire(now)
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every(),
                                                              self.sweep_idle)

    def stop(self) -> None:
        """Stop accepting and close every connection (in-flight calls are cancelled), like
        tornado's ``HTTPServer.stop`` plus the connections."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
        for conn in [*self.connections, *self.lingering]:
            conn.abort()


class _Stop(Exception):
    """Raised from a parser callback after a refusal: stops parsing the read at once."""


# What the parser is reading on a connection.
_IDLE, _HEAD, _BODY = 0, 1, 2
_LINGER = 2.0  # seconds a refused client's further bytes are read (and dropped) before close
_LINGER_BYTES = 1 << 20  # ... and at most this many
# Host header values accepted (RFC 3986 host and port; no comma: tornado refuses those too).
_HOST = re.compile(r"(\[[0-9A-Za-z:.]+\]|[A-Za-z0-9\-._~!$&'()*+;=%]*)(:[0-9]*)?")


class Connection(asyncio.Protocol):
    """One client connection: parses requests and answers them one at a time.

    Head bytes are counted per read, since httptools reports a header only once it
    is complete: a head still open after a read that began inside it is that many
    bytes longer; a head that began in this read is at least what was reported.
    """

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.max_body = server.max_body
        self.max_head = server.max_head
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()
        self.busy = False
        self.closing = False
        self.reading_paused = False
        self.writing_paused = False
        self.drain: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.exchange: ServerExchange | None = None  # of the task in flight
        self.on_close: Callable[[], None] | None = None
        self.state = _IDLE
        self.started = 0.0  # when the head or body being read began (monotonic)
        self.eof = False  # the client half-closed: answer what was read, then close
        self._dropped = 0  # bytes received once closing (dropped unread)
        self._url = b""
        self._items: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._keep_alive = True
        self._refused = False
        self._refusal: ProtocolError | None = None
        self._head_size = 0
        self._wire = 0  # bytes of whole reads that went to the body being read
        self._counting = True  # header callbacks count head bytes (not in continued reads)
        self._completed = 0  # messages read to their end
        self._good_host = ""
        self.last_active = time.monotonic()

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        server = self.server
        if len(server.connections) >= server.max_connections:
            self.closing = True
            error = ProtocolError(503, "unavailable", "the gateway holds its limit of "
                                  f"{server.max_connections} open connections; retry shortly",
                                  code="too_many_connections", headers={"retry-after": "1"})
            body = server.refused_connection(error)
            self.transport.write(head(503, [("content-type", "application/json"),
                                             ("retry-after", "1")],
                                       b"content-length: %d\r\nconnection: close\r\n\r\n"
                                       % len(body)) + body)
            self._linger()
            server.count("-", "-", 503, 0.0, len(body))
            return
        server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:  # refused, or lingering before close: what follows is not read
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES:
                self.abort()
            return
        try:
            if self.state == _HEAD:
                self._feedhead(data)
                return
            completed = self._completed
            began_idle = self.state == _IDLE
            self.parser.feed_data(data)
            if self.state == _HEAD:  # a head began in this read and is still open
                if began_idle and completed == self._completed:
                    self._head_size = len(data)  # the whole read (stray CRLFs aside)
                if self._head_size > self.max_head:
                    self._refusehead()
            elif self.state == _BODY and not began_idle and completed == self._completed:
                self._size_wire(len(data))
        except httptools.HttpParserUpgrade:
            if not self.closing:  # (refused in on_headers_complete: never reached)
                self._refuse_now(_upgrade_refusal())
        except httptools.HttpParserError as exc:
            if not self.closing:
                self._refuse_now(ProtocolError(400, "invalid_request",
                                          f"malformed HTTP request ({exc})"))
        except _Stop:  # raised outside a callback: already refused
            pass

    def _feedhead(self, data: bytes) -> None:
        """Feed a read that continues a head begun earlier: every byte up to the head's
        end belongs to it, so the head is refused (431) the moment it passes the limit,
        exactly, however the client splits it."""
        self._counting = False
        room = self.max_head - self._head_size
        if len(data) <= room:
            self.parser.feed_data(data)
            if self.state == _HEAD:
                self._head_size += len(data)
            return
        view = memoryview(data)
        self.parser.feed_data(view[:room + 1])
        if self.state == _HEAD:
            self._head_size += room + 1
            self._refusehead()
        elif not self.closing:
            self.parser.feed_data(view[room + 1:])

    def _size_wire(self, size: int) -> None:
        """A whole read went to the body being read: chunk framing and trailers count
        against ``max_body_bytes`` too (with the head's allowance for framing)."""
        self._wire += size
        if self._wire > self.max_body + self.max_head and not self.closing:
            self._too_large(self._wire)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        self.server.lingering.discard(self)
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.on_close is not None:
            callback, self.on_close = self.on_close, None
            callback()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self.drain is not None and not self.drain.done():
            self.drain.set_result(None)
        self.drain = None

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        self.state = _HEAD
        self.started = time.monotonic()
        self._url = b""
        self._items = []
        self._body = []
        self._size = 0
        self._wire = 0
        self._head_size = 0
        self._counting = True
        self._refused = False
        self._refusal = None

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.server.max_url:
            self._refuse_now(ProtocolError(414, "invalid_request", "request target exceeds the "
                                      f"gateway's limit of {self.server.max_url} bytes"))
            raise _Stop
        if self._counting:
            self._head_size += len(url)
            if self._head_size > self.max_head:
                self._refusehead()

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.state != _HEAD:  # a chunked body's trailer: never taken for a header
            self._size += len(name) + len(value) + 4
            if self._size > self.max_body:
                self._too_large(self._size)
                raise _Stop
            return
        self._items.append((name.decode("latin-1"), value.decode("latin-1")))
        if self._counting:
            self._head_size += len(name) + len(value) + 4
            if self._head_size > self.max_head:
                self._refusehead()

    def _refusehead(self) -> None:
        self._refuse_now(ProtocolError(431, "too_large", "request line and headers exceed the "
                                  f"gateway's limit of {self.max_head} bytes"))
        raise _Stop

    def on_headers_complete(self) -> None:
        self.state = _BODY
        self.started = time.monotonic()
        parser = self.parser
        if parser.should_upgrade():  # Upgrade or CONNECT: what follows is not HTTP/1.1
            self._refuse_now(_upgrade_refusal())
            raise _Stop
        self._keep_alive = parser.should_keep_alive()
        expect = False
        hosts = 0
        host = ""
        for name, value in self._items:
            lname = name.lower()
            if lname == "content-length" and value.isdigit() and int(value) > self.max_body:
                self._too_large(int(value))
                raise _Stop
            if lname == "host":
                hosts += 1
                host = value
            elif lname == "expect" and value.lower() == "100-continue":
                expect = True
        if hosts != 1 or host != self._good_host:
            self._check_host(hosts, host)
        if expect and not self.busy and not self.queue and self._refusal is None:
            self.transport.write(_CONTINUE)

    def _check_host(self, hosts: int, host: str) -> None:
        """RFC 9112 3.2: one valid Host (HTTP/1.1 requires it); otherwise the request is
        answered 400 once read, and the connection goes on."""
        if hosts == 1 and _HOST.fullmatch(host):
            self._good_host = host
        elif hosts > 1:
            self._refusal = ProtocolError(400, "invalid_request", "more than one Host header")
        elif hosts == 1:
            self._refusal = ProtocolError(400, "invalid_request", f"invalid Host header {host!r}")
        elif self.parser.get_http_version() != "1.0":
            self._refusal = ProtocolError(400, "invalid_request",
                                     "missing Host header (HTTP/1.1 requires one)")

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._size += len(body)
        if self._size > self.max_body:
            self._too_large(self._size)
            raise _Stop
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.state = _IDLE
        self._completed += 1
        if self._refused:
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._enqueue(Request(self.parser.get_method().decode("latin-1"),
                               self._url.decode("latin-1"), self.parser.get_http_version(),
                               self._items, body, self._keep_alive, self._refusal))

    # -- deadlines -----------------------------------------------------------------------
    def expire(self, now: float) -> None:
        """Called by :meth:`HttpServer.sweep_idle`: a head or body not received within its
        deadline is answered 408 (after any earlier responses) and the connection closes;
        a keep-alive connection idle past ``idle_timeout`` is closed. Nothing expires
        while reading is paused for the client's earlier requests."""
        if self.closing or self.reading_paused:
            return
        server = self.server
        if self.state == _HEAD and now - self.started > server.head_timeout:
            self._refuse_now(ProtocolError(408, "timeout", "request line and headers not received "
                                      f"within the gateway's limit of {server.head_timeout:g} s"))
        elif self.state == _BODY and now - self.started > server.body_timeout:
            self._refuse_now(ProtocolError(408, "timeout", "request body not received within the "
                                      f"gateway's limit of {server.body_timeout:g} s"))
        elif (self.state == _IDLE and not self.busy and not self.queue
              and now - self.last_active > server.idle_timeout):
            self.closing = True
            self.transport.close()

    # -- requests in turn --------------------------------------------------------------
    def _too_large(self, size: int) -> None:
        """Refuse the request being read; the rest of its body is never read."""
        self._refuse_now(ProtocolError(413, "too_large", f"request body of {size} bytes exceeds "
                                  f"the gateway's limit of {self.max_body} bytes"),
                         method=self.parser.get_method().decode("latin-1"))

    def _refuse_now(self, error: ProtocolError, method: str = "GET") -> None:
        """Answer ``error`` after any earlier requests, then close: the rest of what the
        client sends is not read."""
        self._refused = True
        self.closing = True
        url = self._url.decode("latin-1") or "/"  # as much as was read: picks the dialect
        self._enqueue(Request(method, url, "1.1", self._items, b"", False, error))

    def _enqueue(self, request: Request) -> None:
        self.queue.append(request)
        if not self.busy:
            self._next()
        elif len(self.queue) >= _MAX_QUEUED and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()

    def _next(self) -> None:
        """Start answering the oldest waiting request."""
        if not self.queue or self.transport.is_closing():
            return
        request = self.queue.popleft()
        if self.reading_paused and not self.closing:
            self.reading_paused = False
            self.transport.resume_reading()
        self.busy = True
        exchange = ServerExchange(self, request)
        if request.refusal is not None:
            self.server.refuse(exchange, request.refusal)
            return
        task = self.server.serve(exchange)
        if task is not None:
            self.exchange = exchange
            self.task = task
            task.add_done_callback(exchange.task_done)

    def response_done(self, keep_alive: bool) -> None:
        """Called when a response has been written in full."""
        self.task = None
        self.on_close = None
        self.busy = False
        self.last_active = time.monotonic()
        if self.transport.is_closing():
            self.closing = True
        elif not keep_alive or (self.eof and not self.queue):
            self.closing = True
            self._linger()
        elif self.queue:  # a pipelined request: started after this call unwinds
            self.busy = True
            self.loop.call_soon(self._next)

    def _linger(self) -> None:
        """Close after a response that ends the connection: send FIN once it is written,
        then drop what the client still sends for a moment (closing with unread bytes
        would reset the connection, and the client could lose the response), at most
        ``_LINGER`` seconds and ``_LINGER_BYTES``."""
        transport = self.transport
        self.server.connections.discard(self)
        if self.reading_paused:
            self.reading_paused = False
            transport.resume_reading()
        if self.eof:  # the client has already finished sending
            transport.close()
        elif transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the client is already gone (ENOTCONN)
                transport.abort()
                return
            self.server.lingering.add(self)
            self.loop.call_later(_LINGER, self.abort)
        else:
            transport.close()

    def eof_received(self) -> bool:
        """The client sent FIN (asyncio asks whether to keep the transport open). While
        lingering, or with nothing to answer, that ends the connection; otherwise the
        requests already read are answered, then ``response_done`` closes it. With a
        data-plane call in flight, :meth:`_probe` finds out whether the client left."""
        self.eof = True
        keep = not self.closing and (self.busy or bool(self.queue))
        if keep and self.task is not None and not self.task.done():
            self.loop.call_later(_PROBE_AFTER, self._probe, self.task, 0.0)
        return keep

    def _nudge(self, exchange: "ServerExchange | None") -> None:
        """Write something every client ignores, so that the host of a client that closed
        its socket answers with a reset: an interim ``100 Continue`` before the head
        (HTTP/1.1 clients skip 1xx), an SSE comment inside an event stream (the relay
        writes whole events, so it falls between two)."""
        if exchange is None or exchange.request.version != "1.1":
            return
        if not exchange.head_sent:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        for name, value in exchange._headers:
            if name.lower() == "content-type" and value.startswith("text/event-stream"):
                self.transport.write(b"%x\r\n%s\r\n" % (len(_PROBE), _PROBE)
                                     if exchange._chunked else _PROBE)
                return

    def _probe(self, task: asyncio.Task, delay: float) -> None:
        """A FIN came while ``task`` (a data-plane call) runs: a half-closed client still
        reads its answer, a client that left does not, and its host resets the
        connection. On a reset, drop the connection, which cancels the call, so the
        upstream stops at once and the call is charged what it cost so far. Polled at
        growing intervals (up to 1 s) while the call runs; a call that ends within
        ``_PROBE_AFTER`` of the FIN is answered without any of this."""
        if task.done() or self.closing or self.task is not task:
            return
        if not delay:
            self._nudge(self.exchange)
            self.loop.call_later(0.02, self._probe, task, 0.02)
            return
        sock = self.transport.get_extra_info("socket")
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            gone = any(mask & (select.POLLERR | select.POLLHUP) for _, mask in poller.poll(0))
        except (OSError, ValueError):
            gone = True
        if gone:
            self.abort()
            return
        self.loop.call_later(delay, self._probe, task, min(delay * 2, 1.0))

    def abort(self) -> None:
        """Drop the connection at once (the client sees a cut response)."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    async def drained(self) -> None:
        """Wait until the client's socket takes more data; :class:`ClientGone` if it left."""
        if self.transport.is_closing():
            raise ClientGone()
        if self.writing_paused:
            self.drain = self.loop.create_future()
            await self.drain
            if self.transport.is_closing():
                raise ClientGone()


_PROBE = b": probe\n\n"  # an SSE comment: clients skip it
_PROBE_AFTER = 0.25  # seconds after a FIN before a call still running is probed


def _upgrade_refusal() -> ProtocolError:
    return ProtocolError(400, "invalid_request", "protocol upgrades (Upgrade, CONNECT) are not "
                    "served by this gateway; send plain HTTP/1.1 requests")


def head(status: int, headers: Iterable[tuple[str, str]], framing: bytes) -> bytes:
    """A response head: status line, ``headers``, date and the framing header(s).

    A header whose name or value could end the line early (CR, LF, NUL) or that is not
    latin-1 is left out, with a warning: nothing a handler or an upstream supplies can
    add a header or a response of its own."""
    parts = [_status_line(status)]
    for name, value in headers:
        line = f"{name}: {value}\r\n"
        if "\r" in line[:-2] or "\n" in line[:-2] or "\0" in line or ":" in name:
            log.warning("jupyter-vkeys: response header %r dropped (CR, LF or NUL in it)",
                        name)
            continue
        try:
            parts.append(line.encode("latin-1"))
        except UnicodeEncodeError:
            log.warning("jupyter-vkeys: response header %r dropped (not latin-1)", name)
    parts.append(_date_header())
    parts.append(framing)
    return b"".join(parts)


_BODYLESS = frozenset({204, 304})


class ServerExchange(Exchange):
    """:class:`Exchange` of one request on a :class:`Connection` (``conn``), created by the
    connection when the request's turn comes and handed to :meth:`HttpServer.serve`."""

    __slots__ = ("conn", "request", "body", "_headers_map", "_status", "_headers", "_sent",
                 "_chunked", "_finished")

    def __init__(self, conn: Connection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.body = request.body
        self._headers_map: dict[str, str] | None = None
        self._status = 200
        self._headers: Iterable[tuple[str, str]] = ()
        self._sent = False
        self._chunked = False
        self._finished = False

    def header(self, name: str) -> str | None:
        if self._headers_map is None:
            self._headers_map = {k.lower(): v for k, v in self.request.items}
        return self._headers_map.get(name)

    def header_items(self) -> Iterable[tuple[str, str]]:
        return self.request.items

    @property
    def head_sent(self) -> bool:
        return self._sent

    def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        self._status = status
        self._headers = headers

    async def write(self, data: bytes) -> None:
        conn = self.conn
        if conn.transport.is_closing():
            raise ClientGone()
        if not self._sent:
            self._sent = True
            keep = self.request.keep_alive and self.request.version == "1.1"
            self._chunked = keep
            framing = b"transfer-encoding: chunked\r\n\r\n" if keep else \
                b"connection: close\r\n\r\n"
            self.request.keep_alive = keep
            response_head = head(self._status, self._headers, framing)
            conn.transport.write(response_head + (b"%x\r\n%s\r\n" % (len(data), data)
                                                  if keep else data)
                                 if data else response_head)
        elif data:
            conn.transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)
        if conn.writing_paused:
            await conn.drained()

    def finish(self, data: bytes = b"") -> None:
        if self._finished:
            return
        self._finished = True
        conn = self.conn
        keep = self.request.keep_alive
        if conn.transport.is_closing():
            conn.response_done(False)
            return
        if not self._sent:
            self._sent = True
            connection = (b"" if self.request.version == "1.1" else
                          b"connection: keep-alive\r\n") if keep else b"connection: close\r\n"
            if self._status in _BODYLESS or self._status < 200:  # no body, no length
                framing = connection + b"\r\n"
                data = b""
            else:
                framing = b"content-length: %d\r\n%s\r\n" % (len(data), connection)
            conn.transport.write(head(self._status, self._headers, framing) + data)
        elif self._chunked:
            conn.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data
                                 else b"0\r\n\r\n")
        elif data:
            conn.transport.write(data)
        conn.response_done(keep)

    def abort(self) -> None:
        self._finished = True
        self.conn.abort()

    def task_done(self, task: asyncio.Task) -> None:
        """Done callback of the call's task: a call that ended without answering (it was
        cancelled, or a bug) cuts the connection rather than leaving it hanging."""
        if not self._finished:
            self.abort()
