"""What one data-plane call needs from the HTTP server in front of it.

The call path (:mod:`jupyter_vkeys.gateway.proxy`) is written against
:class:`Exchange`, not against a web framework, so two servers can carry it:

- the tornado handlers of :mod:`jupyter_vkeys.gateway.dataplane` (inside a Jupyter
  server, where tornado owns the socket), through ``TornadoExchange``;
- the lean HTTP/1.1 server (:mod:`.server`, :class:`~.server.ServerExchange`), which
  answers data-plane calls without tornado's per-request machinery.

Each implementation is created by its server for one request and handed to
``ProxyCall.run``.
"""

from __future__ import annotations

from typing import Iterable


class ClientGone(Exception):
    """Raised by :meth:`Exchange.write` when the client closed the connection."""


class Exchange:
    """One request/response on a client connection (the server-side seam).

    ``body`` is the whole request body (the data plane never streams requests).
    The response goes out as :meth:`start` (status and headers, buffered), then
    either :meth:`finish` with the whole body, or :meth:`write` per streamed
    chunk (which sends the head first) followed by :meth:`finish`.
    """

    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The request header ``name`` (lower-case), or None."""
        raise NotImplementedError

    def header_items(self) -> Iterable[tuple[str, str]]:
        """Every request header as ``(name, value)``, in arrival order."""
        raise NotImplementedError

    @property
    def head_sent(self) -> bool:
        """Whether the status line and headers have reached the client."""
        raise NotImplementedError

    def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        """Set the response status and headers (sent with the first write or finish)."""
        raise NotImplementedError

    async def write(self, data: bytes) -> None:
        """Send ``data`` as part of a streamed body and wait until the client's socket
        accepts more; raises :class:`ClientGone` if the client has left."""
        raise NotImplementedError

    def finish(self, data: bytes = b"") -> None:
        """End the response with ``data`` (the whole body if nothing was written yet)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Close the connection without ending the response (the client sees a cut)."""
        raise NotImplementedError
