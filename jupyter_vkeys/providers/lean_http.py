"""A lean pooled HTTP/1.1 client for the data plane's upstream calls.

Chosen by measurement (``benchmarks/run.py``): aiohttp's ``ClientSession`` is the
best general-purpose pooled client on tornado's asyncio loop, but most of its
per-request work (cookie jars, tracing hooks, multidicts, payload registries)
serves features a proxy never uses. This client does only what the gateway
needs: keep-alive connections pooled per upstream (plain or TLS), one
``write`` per request, response parsing in C by ``httptools`` (llhttp, as in
uvicorn), the body handed over chunk by chunk as it arrives, a connect
timeout and a read (silence) timeout. It implements the same
:class:`~.transport.Transport` seam as :class:`~.transport.HttpTransport`.

A reused connection that the server closed while idle is detected when the
request gets no byte back, and the request is sent once more on a fresh
connection (nothing reached the upstream's application in that case).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import AsyncIterator
from urllib.parse import urlsplit

import httptools

from .transport import UpstreamError, UpstreamRequest

_IDLE_PER_HOST = 256


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


class _Connection(asyncio.Protocol):
    """One keep-alive connection; also the httptools parser's callback object."""

    def __init__(self, pool: "LeanTransport", key: tuple) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self.reused = False
        self._reset()

    def _reset(self) -> None:
        self.header_items: list[tuple[str, str]] = []
        self.status = 0
        self.keep_alive = False
        self.chunks: deque[bytes] = deque()
        self.done = False
        self.error: UpstreamError | None = None
        self.received = False
        self.waiter: asyncio.Future | None = None
        self.headers_waiter: asyncio.Future | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError("unreachable", f"malformed upstream response ({exc})"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.done:
            self._fail(UpstreamError("unreachable", "the upstream closed the connection"))

    # -- httptools callbacks -----------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_items.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()  # not reliable after the body
        waiter = self.headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self._wake()

    def on_message_complete(self) -> None:
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
        self._fail(UpstreamError("timeout", "the upstream stopped sending (read timeout)"))
        self.abort()

    def abort(self) -> None:
        """Drop the connection (after an error, a timeout or an unfinished body)."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    async def _wait(self, future: asyncio.Future) -> None:
        self.timer = self.loop.call_later(self.pool.read_timeout, self._timed_out)
        try:
            await future
        finally:
            self.timer.cancel()

    # -- one exchange ----------------------------------------------------------------
    async def exchange(self, head: bytes, body: bytes) -> "_Response":
        self._reset()
        self.headers_waiter = self.loop.create_future()
        self.transport.write(head + body if len(body) < 65536 else head)
        if len(body) >= 65536:
            self.transport.write(body)
        await self._wait(self.headers_waiter)
        return _Response(self)


class _Response:
    """An upstream answer: status and headers in, body read with :meth:`chunks`."""

    __slots__ = ("conn", "status", "headers", "_closed")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.status = conn.status
        self.headers = _Headers(conn.header_items)
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self.conn
        while True:
            if conn.chunks:
                if len(conn.chunks) == 1:
                    yield conn.chunks.popleft()
                else:
                    data = b"".join(conn.chunks)
                    conn.chunks.clear()
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


class LeanTransport:
    """Pooled keep-alive HTTP/1.1 transport (see the module docstring)."""

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.ssl_context = ssl_context
        self._idle: dict[tuple, list[_Connection]] = {}
        self._targets: dict[str, tuple] = {}

    def _target(self, url: str) -> tuple[tuple, str]:
        """``((host, port, secure, host header), path with query)`` of ``url``, cached."""
        scheme, _, rest = url.partition("://")
        netloc, _, path = rest.partition("/")
        key = self._targets.get(scheme + netloc)
        if key is None:
            parts = urlsplit(url)
            secure = parts.scheme == "https"
            key = (parts.hostname or "", parts.port or (443 if secure else 80), secure,
                   parts.netloc.rsplit("@", 1)[-1])
            self._targets[scheme + netloc] = key
        return key, "/" + path

    async def _connect(self, key: tuple) -> _Connection:
        host, port, secure, _ = key
        loop = asyncio.get_running_loop()
        context = None
        if secure:
            context = self.ssl_context or ssl.create_default_context()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self, key), host, port, ssl=context,
                                       server_hostname=host if secure else None),
                self.connect_timeout)
        except asyncio.TimeoutError:
            raise UpstreamError("timeout", f"connecting to {host}:{port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError("unreachable", f"cannot connect to {host}:{port} "
                                               f"({type(exc).__name__})") from None
        return conn

    def _release(self, conn: _Connection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) < _IDLE_PER_HOST:
            conn.reused = True
            idle.append(conn)
        else:
            conn.abort()

    async def send(self, request: UpstreamRequest) -> _Response:
        key, path = self._target(request.url)
        lines = [f"{request.method} {path} HTTP/1.1\r\nhost: {key[3]}\r\n"
                 f"content-length: {len(request.body)}\r\n"]
        for name, value in request.headers.items():
            if "\r" in value or "\n" in value:
                raise UpstreamError("unreachable", f"refusing header {name!r} with a line break")
            lines.append(f"{name}: {value}\r\n")
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            try:
                return await conn.exchange(head, request.body)
            except UpstreamError:
                if conn.received:
                    raise
                conn.abort()  # closed while idle: retry on a fresh connection
        conn = await self._connect(key)
        return await conn.exchange(head, request.body)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.abort()
        self._idle.clear()
