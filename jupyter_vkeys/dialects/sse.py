"""Metering a provider's answer: the SSE plumbing every dialect's meter shares.

A meter sees every byte the client will see and forwards them unchanged, in
whole SSE events. Only events that can carry usage are parsed; everything else
is passed through by a substring test. The one exception to "never alter a
stream": when the gateway itself asked an OpenAI-style upstream for
``stream_options.include_usage``, the extra usage-only chunk is removed, since
the client did not ask for it.

The call path gets a meter from ``Dialect.meter`` once per call, then calls
``read_body`` (a whole answer) or ``feed`` per upstream chunk and ``finish`` at the
end of a stream.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..usage import Usage


def event_span(buffer: bytes, at: int) -> tuple[int, int]:
    """``(start, end)`` of the SSE event holding offset ``at`` (end includes its blank
    line)."""
    start = buffer.rfind(b"\n\n", 0, at)
    end = buffer.find(b"\n\n", at)
    return (0 if start < 0 else start + 2), (len(buffer) if end < 0 else end + 2)


def split_events(buffer: bytes) -> tuple[bytes, bytes]:
    """Cut ``buffer`` after its last complete SSE event: ``(complete, rest)``."""
    end = buffer.rfind(b"\n\n")
    end_crlf = buffer.rfind(b"\r\n\r\n")
    if end_crlf >= 0 and end_crlf + 4 > end + 2:
        return buffer[:end_crlf + 4], buffer[end_crlf + 4:]
    if end < 0:
        return b"", buffer
    return buffer[:end + 2], buffer[end + 2:]


def data_of(event: bytes) -> Any:
    """The JSON of an event's ``data:`` line(s), or None."""
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines or lines[0] == b"[DONE]":
        return None
    try:
        return orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        return None


def json_object(body: bytes) -> dict[str, Any] | None:
    """``body`` parsed, if it is a JSON object (what a whole answer's meter reads)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class Meter:
    """What one call used: usage, finish reason and served model. A dialect's subclass
    knows its bodies (:meth:`read_body`) and its stream's events (:meth:`_events`)."""

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.usage: Usage | None = None
        self.finish_reason = ""
        self.response_model = ""
        self.deltas = 0  # content events seen: an estimate of output tokens when usage is cut off
        self._pending = b""

    def read_body(self, body: bytes) -> None:
        """Meter a non-streamed JSON answer (parsed once here): its model and usage block
        in every dialect, the rest by :meth:`_read_answer`."""
        data = json_object(body)
        if data is None:
            return
        self.response_model = str(data.get("model") or "")
        if "usage" in data:
            self.usage = self._usage_of(data.get("usage"))
        self._read_answer(data)

    def _usage_of(self, block: Any) -> Usage:  # pragma: no cover - overridden
        """The dialect's usage extractor."""
        raise NotImplementedError

    def _read_answer(self, data: dict[str, Any]) -> None:
        """What else a whole answer says (its finish reason), dialect by dialect."""

    def feed(self, data: bytes) -> bytes:
        """Take upstream bytes, return the bytes to send to the client now."""
        complete, self._pending = split_events(self._pending + data if self._pending else data)
        if not complete:
            return b""
        return self._events(complete)

    def finish(self) -> bytes:
        """Flush whatever is left at the end of the stream (an unterminated last event)."""
        rest, self._pending = self._pending, b""
        return self._events(rest) if rest.strip() else rest

    def _events(self, complete: bytes) -> bytes:  # pragma: no cover - overridden
        return complete
