"""Metering: usage, finish reason and served model, read from upstream answers.

A meter sees every byte the client will see and forwards them unchanged, in
whole SSE events. Only events that can carry usage are parsed; everything else
is passed through by a substring test. The one exception to "never alter a
stream": when the gateway itself asked an OpenAI-style upstream for
``stream_options.include_usage``, the extra usage-only chunk is removed, since
the client did not ask for it.

Called by the data plane: :func:`meter_for` once per call, then ``feed`` per
upstream chunk and ``finish`` at the end.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..usage import Usage, from_anthropic, from_openai

_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_PARSE_MARKERS = (b'"finish_reason":"', *_USAGE_MARKERS)


def _event_span(buffer: bytes, at: int) -> tuple[int, int]:
    """``(start, end)`` of the SSE event holding offset ``at`` (end includes its blank
    line)."""
    start = buffer.rfind(b"\n\n", 0, at)
    end = buffer.find(b"\n\n", at)
    return (0 if start < 0 else start + 2), (len(buffer) if end < 0 else end + 2)


def _split_events(buffer: bytes) -> tuple[bytes, bytes]:
    """Cut ``buffer`` after its last complete SSE event: ``(complete, rest)``."""
    end = buffer.rfind(b"\n\n")
    end_crlf = buffer.rfind(b"\r\n\r\n")
    if end_crlf >= 0 and end_crlf + 4 > end + 2:
        return buffer[:end_crlf + 4], buffer[end_crlf + 4:]
    if end < 0:
        return b"", buffer
    return buffer[:end + 2], buffer[end + 2:]


def _data_of(event: bytes) -> Any:
    """The JSON of an event's ``data:`` line(s), or None."""
    lines = [line[5:].strip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines or lines[0] == b"[DONE]":
        return None
    try:
        return orjson.loads(b"\n".join(lines))
    except orjson.JSONDecodeError:
        return None


class Meter:
    """What one call used. Subclasses know a dialect's stream; the base reads whole bodies."""

    def __init__(self, operation: str, dialect: str) -> None:
        self.operation = operation
        self.dialect = dialect
        self.usage: Usage | None = None
        self.finish_reason = ""
        self.response_model = ""
        self.deltas = 0  # content events seen: an estimate of output tokens when usage is cut off
        self.events = 0
        self._pending = b""

    # -- whole bodies --------------------------------------------------------------
    def read_body(self, body: bytes) -> None:
        """Meter a non-streamed JSON answer (parsed once here)."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        self.response_model = str(data.get("model") or "")
        if self.dialect == "anthropic":
            if "usage" in data:
                self.usage = from_anthropic(data.get("usage"))
            elif "input_tokens" in data:  # count_tokens costs nothing
                self.usage = Usage()
            self.finish_reason = str(data.get("stop_reason") or "")
            return
        if "usage" in data:
            self.usage = from_openai(data.get("usage"))
        choices = data.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            self.finish_reason = str(choices[0].get("finish_reason") or "")
        elif self.operation == "responses":
            self.finish_reason = str(data.get("status") or "")

    # -- streams -------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        """Take upstream bytes, return the bytes to send to the client now."""
        complete, self._pending = _split_events(self._pending + data if self._pending else data)
        if not complete:
            return b""
        return self._events(complete)

    def finish(self) -> bytes:
        """Flush whatever is left at the end of the stream (an unterminated last event)."""
        rest, self._pending = self._pending, b""
        return self._events(rest) if rest.strip() else rest

    def _events(self, complete: bytes) -> bytes:  # pragma: no cover - overridden
        return complete


class OpenAIStreamMeter(Meter):
    """Chat/completions and Responses API streams."""

    def __init__(self, operation: str, strip_usage: bool) -> None:
        super().__init__(operation, "openai")
        self.strip_usage = strip_usage

    def _events(self, complete: bytes) -> bytes:
        if self.operation == "responses":
            return self._responses(complete)
        self.deltas += complete.count(b'"delta":{"content"') + complete.count(b'"text":')
        spans = self._spans_to_parse(complete)
        if not spans:
            return complete
        dropped = []
        for start, end in spans:
            data = _data_of(complete[start:end])
            if not isinstance(data, dict):
                continue
            if not self.response_model:
                self.response_model = str(data.get("model") or "")
            usage = data.get("usage")
            if isinstance(usage, dict):
                self.usage = from_openai(usage)
                if self.strip_usage and not data.get("choices"):
                    dropped.append((start, end))
            for choice in data.get("choices") or ():
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.finish_reason = str(choice["finish_reason"])
        if not dropped:
            return complete
        kept, at = [], 0
        for start, end in dropped:
            kept.append(complete[at:start])
            at = end
        kept.append(complete[at:])
        return b"".join(kept)

    def _spans_to_parse(self, complete: bytes) -> list[tuple[int, int]]:
        """``(start, end)`` of the events that can carry the model (the first, until it is
        known), a finish reason or usage, in order; every other event passes unparsed."""
        spans = []
        if not self.response_model:
            spans.append(_event_span(complete, 0))
        for marker in _PARSE_MARKERS:
            at = complete.find(marker)
            while at >= 0:
                span = _event_span(complete, at)
                if span not in spans:
                    spans.append(span)
                at = complete.find(marker, span[1])
        spans.sort()
        return spans

    def _responses(self, complete: bytes) -> bytes:
        self.deltas += complete.count(b"response.output_text.delta")
        if (b"response.completed" in complete or b"response.incomplete" in complete
                or b"response.failed" in complete or not self.response_model):
            for event in complete.split(b"\n\n"):
                data = _data_of(event)
                if isinstance(data, dict) and isinstance(data.get("response"), dict):
                    response = data["response"]
                    self.response_model = str(response.get("model") or self.response_model)
                    if isinstance(response.get("usage"), dict):
                        self.usage = from_openai(response["usage"])
                        self.finish_reason = str(response.get("status") or "")
        return complete


class AnthropicStreamMeter(Meter):
    """Messages API streams: ``message_start`` then cumulative ``message_delta`` usage."""

    def __init__(self, operation: str) -> None:
        super().__init__(operation, "anthropic")

    def _events(self, complete: bytes) -> bytes:
        self.deltas += complete.count(b"content_block_delta")
        if b"message_start" in complete or b"message_delta" in complete:
            for event in complete.split(b"\n\n"):
                if b"message_start" in event:
                    data = _data_of(event)
                    message = data.get("message") if isinstance(data, dict) else None
                    if isinstance(message, dict):
                        self.response_model = str(message.get("model") or "")
                        self.usage = from_anthropic(message.get("usage"))
                elif b"message_delta" in event:
                    data = _data_of(event)
                    if isinstance(data, dict):
                        self.usage = from_anthropic(data.get("usage"), self.usage)
                        delta = data.get("delta")
                        if isinstance(delta, dict) and delta.get("stop_reason"):
                            self.finish_reason = str(delta["stop_reason"])
        return complete


def meter_for(dialect: str, operation: str, stream: bool, strip_usage: bool) -> Meter:
    """The right meter for one call."""
    if not stream:
        return Meter(operation, dialect)
    if dialect == "anthropic":
        return AnthropicStreamMeter(operation)
    return OpenAIStreamMeter(operation, strip_usage)
