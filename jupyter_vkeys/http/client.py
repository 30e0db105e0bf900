"""A lean pooled HTTP/1.1 client for the data plane's upstream calls.

Chosen by measurement (``benchmarks/run.py``): aiohttp's ``ClientSession`` is the
best general-purpose pooled client on tornado's asyncio loop, but most of its
per-request work (cookie jars, tracing hooks, multidicts, payload registries)
serves features a proxy never uses. This client does only what the gateway
needs: keep-alive connections pooled per upstream (plain, TLS, or tunnelled
through an HTTP proxy with ``CONNECT``), one ``write`` per request, response
parsing in C by ``httptools`` (llhttp, as in uvicorn), the body handed over
chunk by chunk as it arrives, a connect timeout and a read (silence) timeout.
It implements the same :class:`~.upstream.Transport` seam as
:class:`~.aiohttp_client.HttpTransport`; ``tests/test_upstream_conformance.py`` runs every
case against both (this client passes all of them; aiohttp fails "bytes arriving while
idle discard the connection").

Rules that keep one caller's answer away from the next caller (each one a
regression test):

- A connection is reused only after a complete message whose framing said
  keep-alive. Any byte after that message (in the same read or later), or any
  byte or EOF arriving while the connection sits idle in the pool, discards it.
- ``1xx`` interim responses (100, 103) are skipped; only the final response
  completes the exchange. ``101`` is an error (the gateway never asks to upgrade).
- A body without ``content-length`` or chunked framing is read until the
  upstream closes (close-delimited, legal HTTP/1.1).
- A request is never sent twice. Before a pooled connection is used it is
  polled: one found closed or readable is dropped and the next one (or a new
  connection) is tried, since nothing was written to it. Once a byte of the
  request is written, any failure (close, reset, read timeout) is the caller's
  error: the upstream may have read the request and may bill it.
- Cancellation (the client left) aborts the connection at once, so the upstream
  sees the call end and stops generating.
"""

from __future__ import annotations

import asyncio
import base64
import select
import ssl
from collections import deque
from typing import AsyncIterator, Callable
from urllib.parse import unquote, urlsplit

import httptools

from .upstream import (ProxySettings, UpstreamError, UpstreamRequest, decoded_chunks,
                        tls_error)

_IDLE_PER_HOST = 256
_PAUSE_BYTES = 1 << 20  # stop reading an upstream this far ahead of the client


class _Headers:
    """Response headers as received (lower-case names), with ``items`` and ``get``."""

    __slots__ = ("_items",)

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items

    def items(self) -> list[tuple[str, str]]:
        return self._items

    def get(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for key, value in self._items:
            if key == name:
                return value
        return default


class _Trailing(Exception):
    """Raised from the parser's callbacks when a second message starts on a connection."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; also the httptools parser's callback object."""

    def __init__(self, pool: "LeanTransport", key: tuple) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.idle = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.header_items: list[tuple[str, str]] = []
        self.status = 0
        self.keep_alive = False
        self.interim = False
        self.until_close = False
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.done = False
        self.error: UpstreamError | None = None
        self.waiter: asyncio.Future | None = None
        self.headers_waiter: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.idle or self.done:
            # Not part of any exchange: a late byte of the last answer, or something
            # meant for whoever uses this connection next. Never deliver it.
            self.keep_alive = False
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Trailing):
                self.keep_alive = False
                self.abort()
            else:
                self._fail(UpstreamError("protocol", f"malformed upstream response ({exc})",
                                         sent=True))
                self.abort()
        except httptools.HttpParserError as exc:
            if self.done:  # garbage after a complete answer: the answer stands
                self.keep_alive = False
                self.abort()
                return
            self._fail(UpstreamError("protocol", f"malformed upstream response ({exc})",
                                     sent=True))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.idle:
            return
        if not self.done:
            if self.until_close and self.status and exc is None:
                self.done = True  # a close-delimited body ends here
                self._wake()
                return
            self._fail(UpstreamError("unreachable", "the upstream closed the connection before "
                                     "its answer was complete", sent=True))

    def pause_writing(self) -> None:  # large request bodies: the kernel buffers them
        pass

    def resume_writing(self) -> None:
        pass

    # -- httptools callbacks -----------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.done:
            raise _Trailing()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_items.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise ValueError("the upstream switched protocols (101)")
            self.interim = True  # 100 Continue, 103 Early Hints: wait for the final answer
            self.header_items = []
            return
        self.status = status
        self.keep_alive = self.parser.should_keep_alive()  # not reliable after the body
        if status not in (204, 304):
            framed = False
            for name, value in self.header_items:
                if name == "content-length" or (name == "transfer-encoding"
                                                and "chunked" in value.lower()):
                    framed = True
                    break
            self.until_close = not framed
            if not framed:
                self.keep_alive = False
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > _PAUSE_BYTES and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        self.done = True
        self._wake()

    # -- plumbing --------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: UpstreamError) -> None:
        if self.error is None:
            self.error = error
        for waiter in (self.headers_waiter, self.waiter):
            if waiter is not None and not waiter.done():
                waiter.set_exception(error)

    def _timed_out(self) -> None:
        self._fail(UpstreamError("timeout", "the upstream stopped sending (read timeout of "
                                 f"{self.pool.read_timeout:g} s)", sent=True))
        self.abort()

    def abort(self) -> None:
        """Drop the connection (after an error, a timeout, stray bytes or an unfinished
        body). Called by this class, by :class:`_Response` and by the pool."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def usable(self, now: float, settled: bool = False) -> bool | None:
        """Whether this idle connection may carry a request: open, not idle too long,
        and with nothing (no byte, no EOF) waiting to be read. Called by
        :meth:`LeanTransport.send` before anything is written to it.

        On TLS a readable socket may hold records that are no data at all (TLS 1.3 sends
        session tickets after the first answer): then the answer is None, "ask again
        once the transport has read them" (``settled=True``); stray data or an EOF read
        meanwhile closes the connection through the protocol callbacks."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return False
        if now - self.idle_since > self.pool.keepalive_timeout:
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            # poll, not select: select() refuses descriptors >= 1024 (FD_SETSIZE), and a
            # busy gateway's sockets pass that; every connection then looked unusable
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN | select.POLLPRI)
            readable = bool(poller.poll(0))
        except (OSError, ValueError):
            return False
        if readable and self.key[2] and not settled:
            return None
        return not readable

    async def _wait(self, future: asyncio.Future) -> None:
        self.timer = self.loop.call_later(self.pool.read_timeout, self._timed_out)
        try:
            await future
        finally:
            self.timer.cancel()

    # -- one exchange ----------------------------------------------------------------
    async def exchange(self, head: bytes, body: bytes) -> "_Response":
        """Write one request and wait for its final response's head. Any failure or
        cancellation aborts the connection (never reused, never retried)."""
        self.idle = False
        self._reset()
        if self.closed:
            raise UpstreamError("unreachable", "the upstream closed the connection before the "
                                               "request was sent")
        self.headers_waiter = self.loop.create_future()
        try:
            if len(body) < 65536:
                self.transport.write(head + body)
            else:
                self.transport.write(head)
                self.transport.write(body)
            await self._wait(self.headers_waiter)
        except BaseException:
            self.abort()
            raise
        return _Response(self)


class _Response:
    """An upstream answer: status and headers in, body read with :meth:`chunks`."""

    __slots__ = ("conn", "status", "headers", "_closed", "_decode")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.status = conn.status
        self.headers = _Headers(conn.header_items)
        self._closed = False
        self._decode: Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None = None

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (decoded if the upstream compressed them)."""
        if self._decode is not None:
            return self._decode(self._raw())
        return self._raw()

    async def _raw(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            if conn.chunks:
                if len(conn.chunks) == 1:
                    data = conn.chunks.popleft()
                else:
                    data = b"".join(conn.chunks)
                    conn.chunks.clear()
                conn.buffered = 0
                if conn.paused and not conn.closed:
                    conn.paused = False
                    conn.transport.resume_reading()
                yield data
                continue
            if conn.error is not None:
                raise conn.error
            if conn.done:
                return
            conn.waiter = conn.loop.create_future()
            await conn._wait(conn.waiter)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        conn = self.conn
        if conn.done and conn.error is None and not conn.closed and conn.keep_alive:
            conn.pool._release(conn)
        else:
            conn.abort()


class _Tunnel(asyncio.Protocol):
    """Reads a proxy's answer to ``CONNECT`` (then the connection is handed over)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.answer: asyncio.Future = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer and not self.answer.done():
            self.answer.set_result(self.buffer)
        elif len(self.buffer) > 65536 and not self.answer.done():
            self.answer.set_exception(UpstreamError("unreachable", "the proxy's answer to "
                                                                   "CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(UpstreamError("unreachable", "the proxy closed the "
                                                                   "connection during CONNECT"))


class LeanTransport:
    """Pooled keep-alive HTTP/1.1 transport (see the module docstring).

    Created by :meth:`VKeysGateway._open_transports` once per provider;
    ``proxies`` (default: none) says which upstreams go through an HTTP proxy.
    """

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0,
                 ssl_context: ssl.SSLContext | None = None, keepalive_timeout: float = 30.0,
                 proxies: ProxySettings | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.ssl_context = ssl_context
        self.proxies = proxies or ProxySettings()
        self._idle: dict[tuple, list[_Connection]] = {}
        self._targets: dict[str, tuple] = {}

    def _target(self, url: str) -> tuple[tuple, str]:
        """``((host, port, secure, host header, proxy), path with query)`` of ``url``,
        cached per scheme and authority."""
        scheme, _, rest = url.partition("://")
        netloc, _, path = rest.partition("/")
        key = self._targets.get(scheme + netloc)
        if key is None:
            parts = urlsplit(url)
            secure = parts.scheme == "https"
            host = parts.hostname or ""
            key = (host, parts.port or (443 if secure else 80), secure,
                   parts.netloc.rsplit("@", 1)[-1], self.proxies.proxy_for(parts.scheme, host))
            self._targets[scheme + netloc] = key
        return key, "/" + path

    async def _connect(self, key: tuple) -> _Connection:
        host, port, secure, _, proxy = key
        loop = asyncio.get_running_loop()
        context = None
        if secure:
            context = self.ssl_context or ssl.create_default_context()
        where = f"{host}:{port}"
        try:
            if proxy:
                return await asyncio.wait_for(self._tunnel(key, proxy, context),
                                              self.connect_timeout)
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, key), host, port, ssl=context,
                                       server_hostname=host if secure else None),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise UpstreamError("timeout", f"connecting to {where} timed out (connect timeout "
                                           f"of {self.connect_timeout:g} s)") from None
        except ssl.SSLError as exc:
            raise tls_error(where, exc) from None
        except OSError as exc:
            raise UpstreamError("unreachable", f"cannot connect to {where} "
                                               f"({exc.strerror or type(exc).__name__})") from None
        return conn

    async def _tunnel(self, key: tuple, proxy: str, context: ssl.SSLContext | None
                      ) -> _Connection:
        """A connection to ``key``'s upstream through the HTTP proxy ``proxy`` (CONNECT),
        with TLS to the upstream itself on top for https."""
        host, port, secure, _, _ = key
        loop = asyncio.get_running_loop()
        parts = urlsplit(proxy)
        where = f"proxy {parts.hostname}:{parts.port or 80}"
        try:
            raw, tunnel = await loop.create_connection(_Tunnel, parts.hostname,
                                                       parts.port or 80)
        except OSError as exc:
            raise UpstreamError("unreachable", f"cannot connect to {where} "
                                               f"({exc.strerror or type(exc).__name__})") from None
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        auth = ""
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            auth = f"proxy-authorization: Basic {base64.b64encode(pair.encode()).decode()}\r\n"
        raw.write(f"CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{auth}\r\n".encode())
        try:
            answer = await tunnel.answer
        except BaseException:
            raw.abort()
            raise
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or fields[1] != "200" or not answer.endswith(b"\r\n\r\n"):
            raw.abort()
            raise UpstreamError("unreachable", f"{where} refused to tunnel to {target} "
                                               f"({status_line[:100]!r})")
        conn = _Connection(self, key)
        if secure:
            try:
                tls = await loop.start_tls(raw, conn, context, server_hostname=host)
            except BaseException:
                raw.abort()
                raise
            conn.connection_made(tls)
        else:
            raw.set_protocol(conn)
            conn.connection_made(raw)
        return conn

    def _release(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < _IDLE_PER_HOST:
            conn.idle = True
            conn.idle_since = conn.loop.time()
            idle.append(conn)
        else:
            conn.abort()

    async def send(self, request: UpstreamRequest) -> _Response:
        key, path = self._target(request.url)
        lines = [f"{request.method} {path} HTTP/1.1\r\nhost: {key[3]}\r\n"
                 f"content-length: {len(request.body)}\r\n"]
        for name, value in request.headers.items():
            if "\r" in value or "\n" in value:
                raise UpstreamError("protocol", f"refusing header {name!r} with a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        idle = self._idle.get(key)
        conn = None
        if idle:
            now = asyncio.get_running_loop().time()
            while idle:
                candidate = idle.pop()
                verdict = candidate.usable(now)
                if verdict is None:  # TLS records waiting: let the transport read them
                    for _ in range(2):  # its reader runs in the loop turn after ours
                        await asyncio.sleep(0)
                    verdict = candidate.usable(now, settled=True)
                if verdict:
                    conn = candidate
                    break
                candidate.abort()  # nothing was written to it: trying another is safe
        if conn is None:
            conn = await self._connect(key)
        response = await conn.exchange(head, request.body)
        encoding = response.headers.get("content-encoding")
        if encoding is not None:
            try:
                response._decode = decoded_chunks(encoding)
            except UpstreamError:
                response.close()
                raise
        return response

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
