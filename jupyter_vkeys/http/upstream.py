"""What an upstream client is: the one-method seam :meth:`Transport.send`, the request
and response it carries, and what both HTTP clients share.

:class:`~.client.LeanTransport` is the gateway's own pooled client (the default);
:class:`~.aiohttp_client.HttpTransport` keeps pooled keep-alive connections with
aiohttp's ``ClientSession`` (measured as the cheapest general-purpose pooled client
for a tornado proxy, see DESIGN.md); the fake provider implements the same interface
in process. The data plane calls ``send`` once per admitted call and reads the body
with :meth:`UpstreamResponse.chunks` as it arrives.

Shared here: :class:`UpstreamError`, the proxy settings (``HTTPS_PROXY``/
``HTTP_PROXY``/``NO_PROXY``), the decoding of a body compressed against the
gateway's ``accept-encoding: identity`` (gzip and deflate are decoded, so the meter
and the client see plain bytes; any other coding is a 502), and the wording of TLS
failures.
"""

from __future__ import annotations

import logging
import ssl
import urllib.request
import zlib
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping, Protocol
from urllib.parse import urlsplit

log = logging.getLogger("jupyter_vkeys.http")

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
