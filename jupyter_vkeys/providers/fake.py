"""The offline fake provider: a deterministic local model, OpenAI- and Anthropic-shaped.

A product feature, not a test double: with no real credentials the gateway
serves every catalog model from here, so demos, notebooks and tests run
offline. Answers are deterministic for a given request; usage is realistic
(input tokens counted from the prompt, output tokens = the request's
``max_tokens``/``max_completion_tokens``/``max_output_tokens`` or 16);
responses are marked (``x-vkeys-fake: true``, ``system_fingerprint:
"fp_vkeys_fake"``).

Latency and failures are injectable per request with headers:

- ``x-vkeys-fake-latency-ms: 250`` waits before the first byte;
- ``x-vkeys-fake-chunk-delay-ms: 20`` waits between stream chunks;
- ``x-vkeys-fake-error: 500`` (any status) answers that error, ``cut`` or
  ``cut:3`` breaks the connection after 3 chunks, ``hang`` never answers.

:class:`FakeTransport` serves it in process; :mod:`.fake_server` serves the
same answers over HTTP on a real port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import orjson

from .transport import UpstreamError, UpstreamRequest

WORDS = ("offline", "fake", "answer", "from", "jupyter", "vkeys", "about", "your", "prompt",
         "with", "deterministic", "tokens", "and", "realistic", "usage", "numbers")
DEFAULT_OUTPUT_TOKENS = 16
EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}
DEFAULT_DIMENSIONS = 1536


def _text_of(value: Any) -> str:
    """All text inside a message content (string, content blocks, nested lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return " ".join(_text_of(v) for k, v in value.items() if k in ("text", "content", "input"))
    return ""


def prompt_tokens(operation: str, body: dict) -> int:
    """Deterministic input-token count: about 4 characters per token, plus 3 per message.

    Always below the request's size in bytes, which the policy engine uses as
    the worst-case bound.
    """
    if operation in ("messages", "messages.count_tokens"):
        parts = [_text_of(body.get("system", ""))] + [_text_of(m.get("content"))
                                                      for m in body.get("messages") or []
                                                      if isinstance(m, dict)]
    elif operation == "chat.completions":
        parts = [_text_of(m.get("content")) for m in body.get("messages") or []
                 if isinstance(m, dict)]
    elif operation == "responses":
        raw = body.get("input", "")
        parts = [_text_of(body.get("instructions", ""))] + (
            [_text_of(m.get("content") if isinstance(m, dict) else m) for m in raw]
            if isinstance(raw, list) else [_text_of(raw)])
    else:  # completions, embeddings
        raw = body.get("prompt", body.get("input", ""))
        parts = [_text_of(p) for p in raw] if isinstance(raw, list) else [_text_of(raw)]
    return sum((len(p) + 3) // 4 + 3 for p in parts) or 1


def output_tokens(body: dict) -> tuple[int, bool]:
    """``(tokens to write, whether that hit the request's limit)``."""
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and value > 0:
            return value, True
    return DEFAULT_OUTPUT_TOKENS, False


def reply_words(body: dict, count: int) -> list[str]:
    """``count`` deterministic words seeded by the request body."""
    seed = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
    return [WORDS[(seed[i % 32] + i) % len(WORDS)] for i in range(count)]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


def _id(prefix: str, body: dict) -> str:
    return prefix + hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def _embedding(model: str, text: str, dims: int, encoding: str) -> Any:
    seed = hashlib.sha256(f"{model}\0{text}".encode()).digest()
    values = [((seed[i % 32] ^ (i * 131 & 0xFF)) - 127.5) / 1275.0 for i in range(dims)]
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{dims}f", *values)).decode()
    return values


@dataclass
class FakeAnswer:
    """One fake exchange: status, headers and the body as a list of chunks."""

    status: int
    headers: dict[str, str]
    parts: list[bytes]
    latency: float = 0.0
    chunk_delay: float = 0.0
    cut_after: int | None = None
    hang: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _error(operation: str, status: int, message: str) -> FakeAnswer:
    if operation.startswith("messages"):
        kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                 429: "rate_limit_error", 529: "overloaded_error"}
        body = {"type": "error", "error": {"type": kinds.get(status, "api_error"),
                                           "message": message}}
    else:
        body = {"error": {"message": message, "type": "server_error" if status >= 500 else
                          "invalid_request_error", "code": None, "param": None}}
    return FakeAnswer(status, {"content-type": "application/json", "x-vkeys-fake": "true",
                               "x-should-retry": "false"}, [orjson.dumps(body)])


def answer(operation: str, body: dict, headers: dict[str, str], *, latency_ms: float = 0.0,
           chunk_delay_ms: float = 0.0) -> FakeAnswer:
    """Build the fake answer to one request (pure; no I/O).

    Called by :class:`FakeTransport` and by the fake HTTP server.
    """
    latency = float(headers.get("x-vkeys-fake-latency-ms", latency_ms) or 0) / 1000
    chunk_delay = float(headers.get("x-vkeys-fake-chunk-delay-ms", chunk_delay_ms) or 0) / 1000
    error = headers.get("x-vkeys-fake-error", "")
    cut_after = None
    if error.isdigit():
        return _error(operation, int(error), f"injected fake error {error}")
    if error.startswith("cut"):
        cut_after = int(error.partition(":")[2] or 2)
    model = str(body.get("model", "fake"))
    stream = bool(body.get("stream"))
    builder = {"chat.completions": _chat, "completions": _completion, "embeddings": _embeddings,
               "responses": _responses, "messages": _messages,
               "messages.count_tokens": _count}.get(operation)
    if builder is None:
        return _error(operation, 404, f"the fake provider does not serve {operation}")
    fake = builder(model, body, stream)
    fake.latency, fake.chunk_delay, fake.cut_after = latency, chunk_delay, cut_after
    fake.hang = error == "hang"
    return fake


def _json(payload: Any) -> FakeAnswer:
    return FakeAnswer(200, {"content-type": "application/json", "x-vkeys-fake": "true"},
                      [orjson.dumps(payload)])


def _stream(parts: list[bytes]) -> FakeAnswer:
    return FakeAnswer(200, {"content-type": "text/event-stream; charset=utf-8",
                            "cache-control": "no-cache", "x-vkeys-fake": "true"}, parts)


def _chat(model: str, body: dict, stream: bool) -> FakeAnswer:
    n_in = prompt_tokens("chat.completions", body)
    n_out, hit_limit = output_tokens(body)
    words = reply_words(body, n_out)
    finish = "length" if hit_limit else "stop"
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
    cid, created = _id("chatcmpl-fake", body), int(time.time())
    if not stream:
        return _json({"id": cid, "object": "chat.completion", "created": created, "model": model,
                      "system_fingerprint": "fp_vkeys_fake",
                      "choices": [{"index": 0, "message": {"role": "assistant",
                                                           "content": " ".join(words),
                                                           "refusal": None},
                                   "logprobs": None, "finish_reason": finish}],
                      "usage": usage})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_vkeys_fake"}
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict, finish_reason: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                          "finish_reason": finish_reason}]})

    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    parts.append(chunk({}, finish))
    if include_usage:
        parts.append(_sse({**base, "choices": [], "usage": usage}))
    parts.append(b"data: [DONE]\n\n")
    return _stream(parts)


def _completion(model: str, body: dict, stream: bool) -> FakeAnswer:
    n_in = prompt_tokens("completions", body)
    n_out, hit_limit = output_tokens(body)
    words = reply_words(body, n_out)
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
    base = {"id": _id("cmpl-fake", body), "object": "text_completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_vkeys_fake"}
    finish = "length" if hit_limit else "stop"
    if not stream:
        return _json({**base, "choices": [{"index": 0, "text": " ".join(words), "logprobs": None,
                                           "finish_reason": finish}], "usage": usage})
    parts = [_sse({**base, "choices": [{"index": 0, "text": (" " if i else "") + w,
                                        "logprobs": None, "finish_reason": None}]})
             for i, w in enumerate(words)]
    parts.append(_sse({**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                            "finish_reason": finish}]}))
    if (body.get("stream_options") or {}).get("include_usage"):
        parts.append(_sse({**base, "choices": [], "usage": usage}))
    parts.append(b"data: [DONE]\n\n")
    return _stream(parts)


def _embeddings(model: str, body: dict, stream: bool) -> FakeAnswer:
    raw = body.get("input", "")
    inputs = raw if isinstance(raw, list) else [raw]
    dims = body.get("dimensions") or EMBEDDING_DIMENSIONS.get(model, DEFAULT_DIMENSIONS)
    encoding = body.get("encoding_format") or "float"
    data = [{"object": "embedding", "index": i,
             "embedding": _embedding(model, _text_of(x) if not isinstance(x, list) else str(x),
                                     int(dims), encoding)} for i, x in enumerate(inputs)]
    n_in = prompt_tokens("embeddings", body)
    return _json({"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": n_in, "total_tokens": n_in}})


def _responses(model: str, body: dict, stream: bool) -> FakeAnswer:
    n_in = prompt_tokens("responses", body)
    n_out, _ = output_tokens(body)  # always "completed", so SDK stream helpers finish
    words = reply_words(body, n_out)
    rid, msg_id = _id("resp_fake", body), _id("msg_fake", body)
    usage = {"input_tokens": n_in, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": n_out, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": n_in + n_out}
    text = " ".join(words)
    message = {"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}
    response = {"id": rid, "object": "response", "created_at": int(time.time()), "model": model,
                "status": "completed", "incomplete_details": None,
                "output": [message], "parallel_tool_calls": True, "tool_choice": "auto",
                "tools": [], "usage": usage, "metadata": {"vkeys_fake": "true"}}
    if not stream:
        return _json(response)
    pending = {**response, "status": "in_progress", "output": [], "usage": None,
               "incomplete_details": None}
    seq = iter(range(10**6))
    parts = [_sse({"type": "response.created", "sequence_number": next(seq),
                   "response": pending}, "response.created"),
             _sse({"type": "response.output_item.added", "sequence_number": next(seq),
                   "output_index": 0, "item": {**message, "status": "in_progress", "content": []}},
                  "response.output_item.added"),
             _sse({"type": "response.content_part.added", "sequence_number": next(seq),
                   "item_id": msg_id, "output_index": 0, "content_index": 0,
                   "part": {"type": "output_text", "text": "", "annotations": []}},
                  "response.content_part.added")]
    for i, word in enumerate(words):
        parts.append(_sse({"type": "response.output_text.delta", "sequence_number": next(seq),
                           "item_id": msg_id, "output_index": 0, "content_index": 0,
                           "delta": word if i == 0 else " " + word, "logprobs": []},
                          "response.output_text.delta"))
    parts.append(_sse({"type": "response.output_text.done", "sequence_number": next(seq),
                       "item_id": msg_id, "output_index": 0, "content_index": 0, "text": text,
                       "logprobs": []}, "response.output_text.done"))
    parts.append(_sse({"type": "response.content_part.done", "sequence_number": next(seq),
                       "item_id": msg_id, "output_index": 0, "content_index": 0,
                       "part": message["content"][0]}, "response.content_part.done"))
    parts.append(_sse({"type": "response.output_item.done", "sequence_number": next(seq),
                       "output_index": 0, "item": message}, "response.output_item.done"))
    parts.append(_sse({"type": "response.completed", "sequence_number": next(seq),
                       "response": response}, "response.completed"))
    return _stream(parts)


def _messages(model: str, body: dict, stream: bool) -> FakeAnswer:
    n_in = prompt_tokens("messages", body)
    n_out, hit_limit = output_tokens(body)
    words = reply_words(body, n_out)
    stop = "max_tokens" if hit_limit else "end_turn"
    mid = _id("msg_fake", body)
    usage = {"input_tokens": n_in, "output_tokens": n_out, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0}
    if not stream:
        return _json({"id": mid, "type": "message", "role": "assistant", "model": model,
                      "content": [{"type": "text", "text": " ".join(words)}],
                      "stop_reason": stop, "stop_sequence": None, "usage": usage})
    parts = [_sse({"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1}}}, "message_start"),
        _sse({"type": "content_block_start", "index": 0,
              "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        _sse({"type": "ping"}, "ping")]
    parts += [_sse({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": w if i == 0 else " " + w}},
                   "content_block_delta") for i, w in enumerate(words)]
    parts.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    parts.append(_sse({"type": "message_delta", "delta": {"stop_reason": stop,
                                                          "stop_sequence": None},
                       "usage": {"output_tokens": n_out}}, "message_delta"))
    parts.append(_sse({"type": "message_stop"}, "message_stop"))
    return _stream(parts)


def _count(model: str, body: dict, stream: bool) -> FakeAnswer:
    return _json({"input_tokens": prompt_tokens("messages.count_tokens", body)})


class _FakeResponse:
    def __init__(self, fake: FakeAnswer) -> None:
        self.fake = fake
        self.status = fake.status
        self.headers = fake.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        fake = self.fake
        for i, part in enumerate(fake.parts):
            if fake.cut_after is not None and i >= fake.cut_after:
                raise UpstreamError("unreachable", "the upstream connection broke "
                                                   "(injected fake cut)")
            if i and fake.chunk_delay:
                await asyncio.sleep(fake.chunk_delay)
            yield part

    def close(self) -> None:
        pass


class FakeTransport:
    """The fake provider in process: no socket, same interface as :class:`HttpTransport`."""

    def __init__(self, *, latency_ms: float = 0.0, chunk_delay_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms

    async def send(self, request: UpstreamRequest):
        body = request.parsed if request.parsed is not None else orjson.loads(request.body)
        fake = answer(request.operation, body, request.headers, latency_ms=self.latency_ms,
                      chunk_delay_ms=self.chunk_delay_ms)
        if fake.hang:
            await asyncio.sleep(3600)
        if fake.latency:
            await asyncio.sleep(fake.latency)
        return _FakeResponse(fake)

    async def close(self) -> None:
        pass
