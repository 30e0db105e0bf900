"""Keeping real provider keys out of what the gateway relays and records.

An upstream may echo the credential it was sent: a 401 body quoting the
``Authorization`` header, a debugging header, a proxy's error page. The gateway
must never pass that on to a notebook, nor store it in the warehouse.

:class:`Scrubber` is built once at start-up (by ``VKeysGateway._open_transports``)
from the configured provider keys, and replaces each key, in the forms an echo
would take (as sent, JSON-escaped, percent-encoded; "Bearer <key>" contains the
key, so it is covered), with ``[redacted]``.

What is scanned, and why (the hot path stays cheap):

- every relayed response header value (one substring test per secret over the
  joined values: well under a microsecond);
- every non-2xx body, before it is relayed and before its text is recorded;
- not 2xx bodies or streams: an upstream that answers 2xx authenticated the call,
  and a model's output cannot contain a key it was never shown (the gateway
  never puts provider keys in a prompt). Scanning every streamed byte would cost
  each call a pass over its whole answer for a case that does not arise.

Keys shorter than 8 characters are not scrubbed (replacing them would mangle
ordinary text); real provider keys are far longer.
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import quote

import orjson

__all__ = ["Scrubber", "REDACTED"]

REDACTED = "[redacted]"
_MIN_LENGTH = 8


class Scrubber:
    """Replaces configured secrets in text, bytes and header lists."""

    __slots__ = ("_text", "_bytes")

    def __init__(self, secrets: Iterable[str]) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if not secret or len(secret) < _MIN_LENGTH:
                continue
            variants.add(secret)
            variants.add(orjson.dumps(secret).decode()[1:-1])
            variants.add(quote(secret, safe=""))
        ordered = sorted(variants, key=len, reverse=True)
        self._text = tuple(ordered)
        self._bytes = tuple(v.encode() for v in ordered)

    def __bool__(self) -> bool:
        return bool(self._text)

    def text(self, value: str) -> str:
        """``value`` with every secret replaced (the same object if it held none)."""
        for secret in self._text:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value

    def data(self, value: bytes) -> bytes:
        """``value`` with every secret replaced (the same object if it held none)."""
        for secret in self._bytes:
            if secret in value:
                value = value.replace(secret, REDACTED.encode())
        return value

    def headers(self, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Header ``(name, value)`` pairs with secrets replaced in values (and names)."""
        if not self._text:
            return items
        joined = "\n".join(f"{name}\n{value}" for name, value in items)
        for secret in self._text:
            if secret in joined:
                return [(self.text(name), self.text(value)) for name, value in items]
        return items
