"""Upstreams that misbehave on purpose, on raw sockets, for the client conformance and
upstream fault suites; and a tiny CONNECT proxy.

:class:`Misbehaving` runs an asyncio server on 127.0.0.1 in a thread of its own (so it
serves a gateway running on another loop as well as a client under test). For every
request it reads, it asks ``script(n, head, body)`` (n counts requests from 1) for a
list of actions, played in order:

- ``bytes``: written as they are (any framing, right or wrong);
- a number: sleep that many seconds;
- ``"close"``: FIN and end the connection; ``"reset"``: RST and end it;
- ``"hang"``: answer nothing and wait until the client closes the connection.

After the last action the connection waits for the next request. With
``on_head=True`` the script is asked as soon as a request's head is in, before its
body is read (to close on a client that is still writing).
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import ssl
import struct
import threading
import time
from typing import Callable, Iterable

Script = Callable[[int, bytes, bytes], Iterable]


def response(status: int = 200, body: bytes = b"{}", headers: Iterable[tuple[str, str]] = (),
             reason: str = "OK", content_type: str = "application/json") -> bytes:
    """A well-formed Content-Length response."""
    lines = [f"HTTP/1.1 {status} {reason}", f"content-type: {content_type}",
             f"content-length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked(parts: Iterable[bytes], status: int = 200, trailers: str = "",
            content_type: str = "text/event-stream", headers: str = "") -> bytes:
    """A whole chunked response (``trailers`` as raw header lines ending in CRLF)."""
    body = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
    return (f"HTTP/1.1 {status} OK\r\ncontent-type: {content_type}\r\n{headers}"
            "transfer-encoding: chunked\r\n\r\n").encode() + body + b"0\r\n" + \
        trailers.encode() + b"\r\n"


def gzipped(body: bytes, status: int = 200) -> bytes:
    """A Content-Length response compressed with gzip (against accept-encoding: identity)."""
    data = gzip.compress(body)
    return (f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip"
            f"\r\ncontent-length: {len(data)}\r\n\r\n").encode() + data


class _ThreadServer:
    """An asyncio server on 127.0.0.1 in a thread of its own (so it serves a gateway on
    another loop as well as a client under test); subclasses define ``_handle``."""

    def _serve(self, tls: ssl.SSLContext | None) -> None:
        """Start listening on a free port; sets ``port`` and ``url``."""
        self._tasks: set[asyncio.Task] = set()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=tls))
            self.port = self.server.sockets[0].getsockname()[1]
            started.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        started.wait(10)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.close()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


class Misbehaving(_ThreadServer):
    """A scripted raw-socket upstream (see the module docstring). Counts connections,
    requests and connections the client closed; keeps every request head and body."""

    def __init__(self, script: Script, *, tls: ssl.SSLContext | None = None,
                 on_head: bool = False) -> None:
        self.script = script
        self.on_head = on_head
        self.connections = 0
        self.requests = 0
        self.client_closed = 0
        self.open = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self._lock = threading.Lock()
        self._serve(tls)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        with self._lock:
            self.connections += 1
            self.open += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                    with self._lock:
                        self.client_closed += 1
                    return
                with self._lock:
                    self.requests += 1
                    n = self.requests
                    self.heads.append(head)
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = b""
                if not self.on_head:
                    body = await reader.readexactly(length)
                    self.bodies.append(body)
                for action in self.script(n, head, body):
                    if isinstance(action, (bytes, bytearray)):
                        writer.write(action)
                        await writer.drain()
                    elif isinstance(action, (int, float)):
                        await asyncio.sleep(action)
                    elif action == "close":
                        writer.close()
                        return
                    elif action == "reset":
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
                        writer.transport.abort()
                        return
                    elif action == "hang":
                        while await reader.read(65536):
                            pass
                        with self._lock:
                            self.client_closed += 1
                        return
                if self.on_head:
                    await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            with self._lock:
                self.client_closed += 1
        finally:
            with self._lock:
                self.open -= 1
            writer.transport.abort()
            self._tasks.discard(asyncio.current_task())

    def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``condition`` (reading this server's counters) until true or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.01)
        return condition()

class ConnectProxy(_ThreadServer):
    """An HTTP proxy that only tunnels (``CONNECT host:port``), to 127.0.0.1 only; keeps
    the targets it was asked for."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.auth: list[str] = []
        self._serve(None)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(asyncio.current_task())
        try:
            await self._tunnel(reader, writer)
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"proxy-authorization:"):
                    self.auth.append(line.split(b":", 1)[1].strip().decode())
            host, _, port = target.rpartition(":")
            if method != "CONNECT" or host != "127.0.0.1":
                writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            self.targets.append(target)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                except ConnectionError:
                    pass
                finally:
                    dst.close()
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            writer.close()

