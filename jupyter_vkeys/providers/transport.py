"""How the gateway reaches an upstream: one method, :meth:`Transport.send`.

:class:`HttpTransport` keeps pooled keep-alive connections (aiohttp's
``ClientSession`` on the running asyncio loop: measured as the cheapest pooled
client for a tornado proxy, see DESIGN.md); :class:`~.lean_http.LeanTransport`
is the gateway's own (the default); the fake provider implements the same
interface in process. The data plane calls ``send`` once per admitted call and
reads the body with :meth:`UpstreamResponse.chunks` as it arrives.

What both HTTP clients share lives here: :class:`UpstreamError`, the proxy
settings (``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``), the decoding of a body
compressed against the gateway's ``accept-encoding: identity`` (gzip and
deflate are decoded, so the meter and the client see plain bytes; any other
coding is a 502), and the wording of TLS failures.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import urllib.request
import zlib
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping, Protocol
from urllib.parse import urlsplit

import aiohttp

log = logging.getLogger("jupyter_vkeys.providers")

_INFLATE_STEP = 1 << 20  # decoded bytes handed on at a time (a gzip bomb is read in steps)


class UpstreamError(Exception):
    """The upstream could not be reached (``kind="unreachable"``), did not answer in
    time (``"timeout"``), failed TLS verification (``"tls"``) or answered something
    that is not acceptable HTTP (``"protocol"``). ``sent`` says whether the request
    may have reached the upstream (then it may be billed, and is never retried).
    Messages never contain credentials."""

    def __init__(self, kind: str, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.sent = sent


def tls_error(where: str, exc: BaseException) -> UpstreamError:
    """The error for a failed TLS handshake with ``where`` (``host:port``); called by
    both clients when connecting."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or "verification failed"
        return UpstreamError("tls", f"the TLS certificate of {where} was rejected ({reason}); "
                                    "if the upstream uses a private CA, set the provider's "
                                    "ca_file")
    reason = getattr(exc, "reason", None) or type(exc).__name__
    return UpstreamError("tls", f"TLS with {where} failed ({reason})")


def decoded_chunks(encoding: str
                   ) -> Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]] | None:
    """A decoder for a body sent with ``content-encoding: encoding`` (None for identity).

    The gateway always asks for ``identity``; an upstream that compresses anyway is
    decoded (gzip, deflate) so that metering and the client see the real bytes, or
    refused with a ``protocol`` error (502) for codings the gateway cannot read.
    Called by both clients once the response head is in.
    """
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding in ("gzip", "x-gzip"):
        wbits = 31
    elif coding == "deflate":
        wbits = 15
    else:
        raise UpstreamError("protocol", f"the upstream sent content-encoding {encoding[:40]!r} "
                                        "although the gateway asked for identity; only gzip and "
                                        "deflate can be decoded", sent=True)

    async def decode(raw: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        inflater = zlib.decompressobj(wbits)
        try:
            async for data in raw:
                while data:
                    out = inflater.decompress(data, _INFLATE_STEP)
                    data = inflater.unconsumed_tail
                    if out:
                        yield out
            tail = inflater.flush()
        except zlib.error:
            raise UpstreamError("protocol", f"the upstream's {coding} body is corrupt",
                                sent=True) from None
        if tail:
            yield tail
        if not inflater.eof:
            raise UpstreamError("protocol", f"the upstream's {coding} body ended early",
                                sent=True)
    return decode


class ProxySettings:
    """Which upstreams are reached through an HTTP proxy (``CONNECT`` tunnels).

    Built by the gateway at start-up from ``c.VKeysGateway.upstream_proxy`` /
    ``upstream_no_proxy`` or, by default, from ``HTTPS_PROXY``, ``HTTP_PROXY`` and
    ``NO_PROXY`` (either case); asked by the clients once per upstream authority.
    """

    def __init__(self, proxies: Mapping[str, str] | None = None, no_proxy: str = "") -> None:
        self.proxies: dict[str, str] = {}
        for scheme, url in (proxies or {}).items():
            url = url.strip()
            if not url:
                continue
            if "://" not in url:
                url = "http://" + url
            if urlsplit(url).scheme != "http" or not urlsplit(url).hostname:
                log.warning("jupyter-vkeys: ignoring %s proxy %s (only http:// proxies are "
                            "supported)", scheme, urlsplit(url).hostname or "(no host)")
                continue
            self.proxies[scheme] = url
        self.no_proxy = no_proxy

    @classmethod
    def from_environment(cls) -> "ProxySettings":
        """Proxies named by the process environment (as curl and requests read them)."""
        env = urllib.request.getproxies_environment()
        return cls({s: env[s] for s in ("http", "https") if s in env}, env.get("no", ""))

    def proxy_for(self, scheme: str, host: str) -> str:
        """The proxy URL for ``scheme://host``, or "" to connect directly."""
        proxy = self.proxies.get(scheme, "")
        if proxy and self.no_proxy and urllib.request.proxy_bypass_environment(
                host, {"no": self.no_proxy}):
            return ""
        return proxy


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
