"""Anthropic's wire dialect (the Messages API): routes, token fields, usage, the stream
meter, errors and the ``/models`` shape.

Usage: ``input_tokens`` exclude cache reads and cache writes; a stream reports usage
in ``message_start`` and, cumulatively, in each ``message_delta`` (take the last, never
sum). Clients authenticate with ``x-api-key`` (or ``Authorization: Bearer``); upstreams
require ``anthropic-version``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..usage import Usage, token_count
from .base import Dialect, Operation
from .sse import Meter, data_of


def usage_of(block: Any, into: Usage | None = None) -> Usage:
    """Usage from an Anthropic ``usage`` block.

    Streams report usage in ``message_start`` and, cumulatively, in each
    ``message_delta``: pass the previous result as ``into`` and the fields the
    new block carries replace the old ones (never summed).
    """
    usage = into if into is not None else Usage()
    if not isinstance(block, dict):
        return usage
    if "input_tokens" in block and block["input_tokens"] is not None:
        usage.input_uncached = token_count(block, "input_tokens")
    if block.get("cache_read_input_tokens") is not None:
        usage.cache_read = token_count(block, "cache_read_input_tokens")
    creation = block.get("cache_creation")
    if isinstance(creation, dict):
        usage.cache_write_5m = token_count(creation, "ephemeral_5m_input_tokens")
        usage.cache_write_1h = token_count(creation, "ephemeral_1h_input_tokens")
    elif block.get("cache_creation_input_tokens") is not None:
        usage.cache_write_5m = token_count(block, "cache_creation_input_tokens")
        usage.cache_write_1h = 0
    if block.get("output_tokens") is not None:
        usage.output = token_count(block, "output_tokens")
    return usage.bounded()


class AnthropicMeter(Meter):
    """Messages and count_tokens answers; streams: ``message_start`` then cumulative
    ``message_delta`` usage."""

    def _usage_of(self, block: Any) -> Usage:
        return usage_of(block)

    def _read_answer(self, data: dict[str, Any]) -> None:
        if "usage" not in data and "input_tokens" in data:  # count_tokens costs nothing
            self.usage = Usage()
        self.finish_reason = str(data.get("stop_reason") or "")

    def _events(self, complete: bytes) -> bytes:
        self.deltas += complete.count(b"content_block_delta")
        if b"message_start" in complete or b"message_delta" in complete:
            for event in complete.split(b"\n\n"):
                if b"message_start" in event:
                    data = data_of(event)
                    message = data.get("message") if isinstance(data, dict) else None
                    if isinstance(message, dict):
                        self.response_model = str(message.get("model") or "")
                        self.usage = usage_of(message.get("usage"))
                elif b"message_delta" in event:
                    data = data_of(event)
                    if isinstance(data, dict):
                        self.usage = usage_of(data.get("usage"), self.usage)
                        delta = data.get("delta")
                        if isinstance(delta, dict) and delta.get("stop_reason"):
                            self.finish_reason = str(delta["stop_reason"])
        return complete


class AnthropicDialect(Dialect):
    """Anthropic's API: ``x-api-key``, ``{"type": "error", "error": {...}}`` bodies."""

    name = "anthropic"
    operations = (
        Operation("messages", "anthropic", "messages", "/v1/messages", ("max_tokens",),
                  "max_tokens"),
        Operation("messages.count_tokens", "anthropic", "messages/count_tokens",
                  "/v1/messages/count_tokens"),
    )
    stream_ends = (b"event: message_stop",)
    private_header_prefixes = ("anthropic-ratelimit-",)
    required_headers = {"anthropic-version": "2023-06-01"}
    credential_header = "x-api-key"
    error_types = {
        "auth": "authentication_error", "permission": "permission_error",
        "invalid_request": "invalid_request_error", "not_found": "not_found_error",
        "too_large": "request_too_large", "rate_limit": "rate_limit_error",
        "budget": "billing_error", "upstream": "api_error", "timeout": "timeout_error",
        "unavailable": "overloaded_error", "internal": "api_error"}

    def credential(self, authorization: str | None, api_key: str | None) -> str | None:
        return super().credential(authorization, api_key) or api_key

    def error_body(self, kind: str, message: str, *, code: str | None = None,
                   param: str | None = None, type_: str | None = None,
                   request_id: str = "") -> bytes:
        payload: dict[str, Any] = {"type": "error", "error": {
            "type": self.error_types.get(kind, "api_error"), "message": message}}
        if request_id:
            payload["request_id"] = request_id
        return orjson.dumps(payload)

    def model_object(self, name: str, provider: str) -> dict[str, Any]:
        return {"type": "model", "id": name, "display_name": name,
                "created_at": "1970-01-01T00:00:00Z"}

    def models_page(self, objects: list[dict[str, Any]]) -> dict[str, Any]:
        return {"data": objects, "has_more": False,
                "first_id": objects[0]["id"] if objects else None,
                "last_id": objects[-1]["id"] if objects else None}

    def meter(self, operation: str, strip_usage: bool = False) -> Meter:
        return AnthropicMeter(operation)


ANTHROPIC = AnthropicDialect()
