"""The aiohttp upstream client: :class:`HttpTransport`, pooled keep-alive HTTP(S)
through aiohttp's ``ClientSession`` on the running asyncio loop.

The alternative to the gateway's own client (:mod:`.client`), chosen with
``c.VKeysGateway.upstream_client = "aiohttp"``; both pass the same conformance suite
(``tests/test_upstream_conformance.py``) but for one case this one fails (bytes
arriving while a connection is idle). Never follows redirects.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import AsyncIterator
from urllib.parse import urlsplit

import aiohttp

from .upstream import (ProxySettings, UpstreamError, UpstreamRequest, UpstreamResponse,
                       decoded_chunks, tls_error)


class _AiohttpResponse:
    __slots__ = ("_resp", "status", "headers", "_decode")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers = resp.headers
        self._decode = decoded_chunks(resp.headers.get("content-encoding", ""))

    def chunks(self) -> AsyncIterator[bytes]:
        if self._decode is not None:
            return self._decode(self._raw())
        return self._raw()

    async def _raw(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except asyncio.TimeoutError:
            raise UpstreamError("timeout", "the upstream stopped sending before the response "
                                           "ended (read timeout)", sent=True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("unreachable", f"the upstream connection broke: "
                                               f"{type(exc).__name__}", sent=True) from None

    def close(self) -> None:
        if self._resp.content.at_eof():
            self._resp.release()
        else:  # an unfinished body: drop the connection so the upstream stops at once
            self._resp.close()


class HttpTransport:
    """Pooled keep-alive HTTP(S) client for real providers and remote fakes.

    ``read_timeout`` bounds the silence between two bytes, not the whole call:
    LLM streams may legitimately run for many minutes.
    """

    def __init__(self, *, connect_timeout: float = 10.0, read_timeout: float = 600.0,
                 max_connections: int = 1000, ssl_context: ssl.SSLContext | bool | None = None,
                 keepalive_timeout: float = 30.0, proxies: ProxySettings | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.ssl_context = ssl_context
        self.keepalive_timeout = keepalive_timeout
        self.proxies = proxies or ProxySettings()
        self._proxy_of: dict[str, str | None] = {}
        self._session: aiohttp.ClientSession | None = None

    def _proxy(self, url: str) -> str | None:
        """The proxy for ``url``'s authority (cached), None for a direct connection."""
        scheme, _, rest = url.partition("://")
        origin = scheme + "://" + rest.partition("/")[0]
        if origin not in self._proxy_of:
            parts = urlsplit(url)
            self._proxy_of[origin] = self.proxies.proxy_for(parts.scheme,
                                                            parts.hostname or "") or None
        return self._proxy_of[origin]

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self.max_connections, limit_per_host=0,
                                             keepalive_timeout=self.keepalive_timeout,
                                             ttl_dns_cache=300,
                                             ssl=self.ssl_context if self.ssl_context is not None
                                             else True)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout,
                                              sock_read=self.read_timeout))
        return self._session

    async def send(self, request: UpstreamRequest) -> UpstreamResponse:
        # Never follow redirects: the next hop would receive the provider credentials.
        try:
            resp = await self._client().request(request.method, request.url,
                                                headers=request.headers, data=request.body,
                                                allow_redirects=False,
                                                proxy=self._proxy(request.url))
        except aiohttp.ConnectionTimeoutError:
            raise UpstreamError("timeout", f"connecting to the upstream timed out (connect "
                                           f"timeout of {self.connect_timeout:g} s)") from None
        except asyncio.TimeoutError:
            raise UpstreamError("timeout", f"the upstream did not answer in time (read timeout "
                                           f"of {self.read_timeout:g} s)", sent=True) from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise tls_error(f"{exc.host}:{exc.port}", exc.certificate_error) from None
        except aiohttp.ClientConnectorSSLError as exc:
            raise tls_error(f"{exc.host}:{exc.port}", exc.os_error) from None
        except aiohttp.ClientProxyConnectionError as exc:
            raise UpstreamError("unreachable", f"cannot connect to proxy {exc.host}:{exc.port} "
                                               f"({exc.strerror or 'refused'})") from None
        except aiohttp.ClientHttpProxyError as exc:
            raise UpstreamError("unreachable", f"the proxy refused to tunnel to the upstream "
                                               f"({exc.status})") from None
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError("unreachable", f"cannot connect to {exc.host}:{exc.port} "
                                               f"({exc.strerror or type(exc).__name__})") from None
        except aiohttp.ClientResponseError as exc:
            raise UpstreamError("protocol", f"malformed upstream response ({exc.message})",
                                sent=True) from None
        except aiohttp.ClientError as exc:
            raise UpstreamError("unreachable", f"the upstream connection broke before its "
                                               f"answer ({type(exc).__name__})",
                                sent=True) from None
        try:
            return _AiohttpResponse(resp)
        except UpstreamError:
            resp.close()
            raise

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
