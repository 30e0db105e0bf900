"""OpenAI's wire dialect (OpenAI, Azure OpenAI, vLLM, Ollama and every other
OpenAI-compatible server): routes, token fields, usage, the stream meter, errors and
the ``/models`` shape.

Usage: ``prompt_tokens`` include ``cached_tokens``; ``completion_tokens`` include
reasoning tokens; the Responses API says ``input_tokens``/``output_tokens``. Streams of
chat and legacy completions carry usage only when ``stream_options.include_usage`` is
set, so the gateway asks for it and strips the extra chunk the client did not ask for.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..usage import Usage, token_count
from .base import Dialect, Operation
from .sse import Meter, data_of, event_span

_USAGE_MARKERS = (b'"usage":{', b'"usage": {')
_PARSE_MARKERS = (b'"finish_reason":"', *_USAGE_MARKERS)


def usage_of(block: Any) -> Usage:
    """Usage from an OpenAI ``usage`` block (chat/completions, embeddings or responses)."""
    if not isinstance(block, dict):
        return Usage()
    if "input_tokens" in block:  # Responses API
        total_in = token_count(block, "input_tokens")
        cached = token_count(block.get("input_tokens_details"), "cached_tokens")
        output = token_count(block, "output_tokens")
        reasoning = token_count(block.get("output_tokens_details"), "reasoning_tokens")
    else:
        total_in = token_count(block, "prompt_tokens")
        cached = token_count(block.get("prompt_tokens_details"), "cached_tokens")
        output = token_count(block, "completion_tokens")
        reasoning = token_count(block.get("completion_tokens_details"), "reasoning_tokens")
    cached = min(cached, total_in)
    return Usage(input_uncached=total_in - cached, cache_read=cached, output=output,
                 reasoning=min(reasoning, output)).bounded()


class OpenAIMeter(Meter):
    """Chat/completions, legacy completions, embeddings and Responses API answers."""

    def __init__(self, operation: str, strip_usage: bool = False) -> None:
        super().__init__(operation)
        self.strip_usage = strip_usage

    def _usage_of(self, block: Any) -> Usage:
        return usage_of(block)

    def _read_answer(self, data: dict[str, Any]) -> None:
        choices = data.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            self.finish_reason = str(choices[0].get("finish_reason") or "")
        elif self.operation == "responses":
            self.finish_reason = str(data.get("status") or "")

    def _events(self, complete: bytes) -> bytes:
        if self.operation == "responses":
            return self._responses(complete)
        self.deltas += complete.count(b'"delta":{"content"') + complete.count(b'"text":')
        spans = self._spans_to_parse(complete)
        if not spans:
            return complete
        dropped = []
        for start, end in spans:
            data = data_of(complete[start:end])
            if not isinstance(data, dict):
                continue
            if not self.response_model:
                self.response_model = str(data.get("model") or "")
            usage = data.get("usage")
            if isinstance(usage, dict):
                self.usage = usage_of(usage)
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
            spans.append(event_span(complete, 0))
        for marker in _PARSE_MARKERS:
            at = complete.find(marker)
            while at >= 0:
                span = event_span(complete, at)
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
                data = data_of(event)
                if isinstance(data, dict) and isinstance(data.get("response"), dict):
                    response = data["response"]
                    self.response_model = str(response.get("model") or self.response_model)
                    if isinstance(response.get("usage"), dict):
                        self.usage = usage_of(response["usage"])
                        self.finish_reason = str(response.get("status") or "")
        return complete


class OpenAIDialect(Dialect):
    """OpenAI's API: ``Authorization: Bearer``, ``{"error": {...}}`` bodies."""

    name = "openai"
    operations = (
        Operation("chat.completions", "openai", "chat/completions", "/chat/completions",
                  ("max_completion_tokens", "max_tokens"), "max_completion_tokens",
                  choices=True, stream_usage_option=True),
        Operation("completions", "openai", "completions", "/completions", ("max_tokens",),
                  "max_tokens", choices=True, stream_usage_option=True),
        Operation("embeddings", "openai", "embeddings", "/embeddings"),
        Operation("responses", "openai", "responses", "/responses", ("max_output_tokens",),
                  "max_output_tokens"),
    )
    stream_ends = (b"data: [DONE]", b"event: response.completed")
    private_header_prefixes = ("x-ratelimit-", "openai-organization", "openai-project")
    error_types = {
        "auth": "invalid_request_error", "permission": "permission_error",
        "invalid_request": "invalid_request_error", "not_found": "invalid_request_error",
        "too_large": "invalid_request_error", "rate_limit": "requests",
        "budget": "insufficient_quota", "upstream": "upstream_error",
        "timeout": "timeout_error", "unavailable": "service_unavailable",
        "internal": "server_error"}
    # error kind -> the ``code`` OpenAI's SDK exposes (``exc.code``)
    error_codes = {
        "auth": "invalid_api_key", "permission": "model_not_allowed", "invalid_request": None,
        "not_found": "model_not_found", "too_large": "request_too_large",
        "rate_limit": "rate_limit_exceeded", "budget": "budget_exceeded",
        "upstream": "bad_gateway", "timeout": "gateway_timeout",
        "unavailable": "provider_unavailable", "internal": "internal_error"}

    def error_body(self, kind: str, message: str, *, code: str | None = None,
                   param: str | None = None, type_: str | None = None,
                   request_id: str = "") -> bytes:
        known = kind if kind in self.error_types else "internal"
        return orjson.dumps({"error": {"message": message,
                                "type": type_ or self.error_types[known],
                                "code": code or self.error_codes[known], "param": param}})

    def model_object(self, name: str, provider: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": provider}

    def models_page(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        return {"object": "list", "data": objects}

    def meter(self, operation: str, strip_usage: bool = False) -> Meter:
        return OpenAIMeter(operation, strip_usage)

    def ask_stream_usage(self, operation: Operation, body: dict[str, Any]) -> bool:
        if not operation.stream_usage_option:
            return False
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            return False
        body["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                  "include_usage": True}
        return True


OPENAI = OpenAIDialect()
