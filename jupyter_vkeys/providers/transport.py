"""How the gateway reaches an upstream: one method, :meth:`Transport.send`.

:class:`HttpTransport` keeps pooled keep-alive connections (aiohttp's
``ClientSession`` on the running asyncio loop: measured as the cheapest pooled
client for a tornado proxy, see DESIGN.md); the fake provider implements the
same interface in process. The data plane calls ``send`` once per admitted call
and reads the body with :meth:`UpstreamResponse.chunks` as it arrives.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import AsyncIterator, Mapping, Protocol

import aiohttp


class UpstreamError(Exception):
    """The upstream could not be reached (``kind="unreachable"``) or did not answer in
    time (``kind="timeout"``). Messages never contain credentials."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class UpstreamRequest:
    """A call as it goes upstream: real credentials already in ``headers``."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    # Only the in-process fake reads these (the parsed body, the operation name).
    parsed: dict | None = field(default=None, repr=False)
    operation: str = ""


class UpstreamResponse(Protocol):
    """An upstream answer whose body is read incrementally."""

    status: int
    headers: Mapping[str, str]

    def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive (already de-chunked, never re-encoded)."""

    def close(self) -> None:
        """Drop the response (returns or closes its connection); safe to call twice."""


class Transport(Protocol):
    """The seam between the data plane and an upstream."""

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        """Send ``request`` and return once status and headers are in."""

    async def close(self) -> None:
        """Release pooled connections; called at gateway shutdown."""


class _AiohttpResponse:
    __slots__ = ("_resp", "status", "headers")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except asyncio.TimeoutError:
            raise UpstreamError("timeout", "the upstream stopped sending before the response "
                                           "ended (read timeout)") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("unreachable", f"the upstream connection broke: "
                                               f"{type(exc).__name__}") from None

    def close(self) -> None:
        self._resp.release()


class HttpTransport:
    """Pooled keep-alive HTTP(S) client for real providers and remote fakes.

    ``read_timeout`` bounds the silence between two bytes, not the whole call:
    LLM streams may legitimately run for many minutes.
    """

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0,
                 max_connections: int = 1000, ssl_context: ssl.SSLContext | bool | None = None
                 ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                             keepalive_timeout=60, ttl_dns_cache=300,
                                             ssl=self.ssl_context if self.ssl_context is not None
                                             else True)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                              sock_read=self.read_timeout))
        return self._session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        try:
            resp = await self._client().request(request.method, request.url,
                                                headers=request.headers, data=request.body)
        except asyncio.TimeoutError:
            raise UpstreamError("timeout", "the upstream did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("unreachable",
                                f"cannot reach the upstream ({type(exc).__name__})") from None
        return _AiohttpResponse(resp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
