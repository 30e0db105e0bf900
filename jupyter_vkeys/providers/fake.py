"""The offline fake provider: a deterministic local model, OpenAI- and Anthropic-shaped.

A product feature, not a test double: with no real credentials the gateway
serves every catalog model from here, so demos, notebooks and tests run
offline. Answers are deterministic for a given request and behave like a
model's: input tokens counted from the prompt; a reply of a typical length (24
to 160 tokens, seeded by the request) unless the request's ``max_tokens``
cuts it short (then ``finish_reason: length``), never more than 4,096 tokens;
``n`` choices; a call of the forced tool when ``tool_choice`` requires one; JSON
that matches ``response_format``/``text.format`` (so the SDKs' ``.parse()``
helpers work). Requests a provider would refuse (``messages`` not a list,
``dimensions`` past 3,072...) get the provider's 400. Responses are marked
(``x-vkeys-fake: true``, ``system_fingerprint: "fp_vkeys_fake"``).

Latency and failures are injectable per request with headers:

- ``x-vkeys-fake-latency-ms: 250`` waits before the first byte;
- ``x-vkeys-fake-chunk-delay-ms: 20`` waits between stream chunks;
- ``x-vkeys-fake-error: 500`` (any status 400-599) answers that error, ``cut`` or
  ``cut:3`` breaks the connection after 3 chunks, ``hang`` never answers.

Those headers reach only the in-process fake: the gateway never forwards an
``x-vkeys-*`` header upstream. The same controls travel in the request body,
which the gateway relays unchanged, as ``metadata`` entries
(``{"metadata": {"vkeys_fake_error": "500", "vkeys_fake_latency_ms": "250",
"vkeys_fake_chunk_delay_ms": "20"}}``): that is how a fake served over HTTP
(:mod:`.fake_server`) behind the gateway is driven. A header wins over metadata.

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

from ..dialects import DIALECTS, OPERATIONS
from .fake_json import instance
from ..http.upstream import UpstreamError, UpstreamRequest

WORDS = ("offline", "fake", "answer", "from", "jupyter", "vkeys", "about", "your", "prompt",
         "with", "deterministic", "tokens", "and", "realistic", "usage", "numbers")
TYPICAL_OUTPUT = (24, 160)  # tokens of a reply nothing cuts short
MAX_OUTPUT = 4096  # the fake never writes more, whatever the request's cap
EMBEDDING_DIMENSIONS = {"text-embedding-3-large": 3072}
DEFAULT_DIMENSIONS = 1536
MAX_DIMENSIONS = 3072
MAX_CHOICES = 128


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


def _seed(body: dict) -> bytes:
    """32 bytes that depend on the whole request (deterministic answers)."""
    try:
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
    except (TypeError, orjson.JSONEncodeError):  # nested past orjson's limit: still answer
        return hashlib.sha256(repr(sorted(map(str, body))).encode()).digest()


def typical_length(body: dict) -> int:
    """How long the fake's reply is when nothing stops it: 24 to 160 tokens, seeded by
    the request, as a chat model's answers vary (never the request's cap itself)."""
    seed = _seed(body)
    return TYPICAL_OUTPUT[0] + int.from_bytes(seed[:2], "big") % (
        TYPICAL_OUTPUT[1] - TYPICAL_OUTPUT[0] + 1)


def output_tokens(body: dict) -> tuple[int, bool]:
    """``(tokens to write, whether the request's cap cut the reply short)``: the typical
    length, or the cap when that is lower."""
    typical = typical_length(body)
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return (value, True) if value < typical else (typical, False)
    return typical, False


def reply_words(body: dict, count: int) -> list[str]:
    """``count`` deterministic words seeded by the request body."""
    seed = _seed(body)
    return [WORDS[(seed[i % 32] + i) % len(WORDS)] for i in range(min(count, MAX_OUTPUT))]


def _sse(data: Any, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + (data if isinstance(data, bytes) else orjson.dumps(data)) + b"\n\n"


def _id(prefix: str, body: dict) -> str:
    return prefix + _seed(body).hex()[:24]


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


# HTTP status -> the error kind each dialect names (see Dialect.error_types)
_ERROR_KINDS = {400: "invalid_request", 401: "auth", 403: "permission", 404: "not_found",
                413: "too_large", 429: "rate_limit", 504: "timeout", 529: "unavailable"}


def _error(operation: str, status: int, message: str) -> FakeAnswer:
    """The fake model's error answer, in the operation's dialect."""
    kind = _ERROR_KINDS.get(status, "internal" if status >= 500 else "invalid_request")
    served = OPERATIONS.get(operation)
    dialect = served.dialect if served else "anthropic" if operation.startswith("messages") \
        else "openai"
    body = DIALECTS[dialect].error_body(kind, message)
    return FakeAnswer(status, {"content-type": "application/json", "x-vkeys-fake": "true",
                               "x-should-retry": "false"}, [body])


def _is_text_input(value: Any) -> bool:
    """Embeddings/completions input: a string, or a list of strings or token arrays."""
    if isinstance(value, str):
        return True
    return isinstance(value, list) and bool(value) and all(
        isinstance(v, (str, int)) or (isinstance(v, list) and all(isinstance(t, int) for t in v))
        for v in value)


def invalid(operation: str, body: dict) -> str | None:
    """What is wrong with a request, as a provider's 400 would say it (None if nothing).

    The fake checks what a real provider would refuse and what would make it misbehave
    (a list of a billion dimensions, messages that are not a list)."""
    if operation in ("chat.completions", "messages", "messages.count_tokens"):
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty array of message objects"
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                return f"'messages[{i}]' must be an object with a string 'role'"
    if operation == "messages":
        cap = body.get("max_tokens")
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            return "'max_tokens' is required: a positive integer"
    if operation in ("chat.completions", "completions"):
        n = body.get("n", 1)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int)
                              or not 1 <= n <= MAX_CHOICES):
            return f"'n' must be an integer between 1 and {MAX_CHOICES}"
    if operation == "completions" and not _is_text_input(body.get("prompt", "")):
        return "'prompt' must be a string or an array of strings"
    if operation == "responses":
        raw = body.get("input")
        if not isinstance(raw, (str, list)):
            return "'input' must be a string or an array of input items"
    if operation == "embeddings":
        if not _is_text_input(body.get("input")):
            return "'input' must be a string or an array of strings or token arrays"
        dims = body.get("dimensions")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int)
                                 or not 1 <= dims <= MAX_DIMENSIONS):
            return f"'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}"
        if body.get("encoding_format", "float") not in ("float", "base64", None):
            return "'encoding_format' must be 'float' or 'base64'"
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        return "'tools' must be an array"
    return None


def _millis(value: str | None, default_ms: float) -> float:
    """Seconds from a latency header in ms (bad or absurd values: the default; max 60 s)."""
    try:
        ms = float(value) if value is not None else default_ms
    except ValueError:
        ms = default_ms
    return min(max(ms, 0.0), 60_000.0) / 1000 if ms == ms else 0.0


def _controls(body: dict, headers: dict[str, str]) -> dict[str, str]:
    """The fake's test controls (``error``, ``latency_ms``, ``chunk_delay_ms``): from the
    ``x-vkeys-fake-*`` headers, else from the body's ``metadata.vkeys_fake_*`` entries."""
    metadata = body.get("metadata") if isinstance(body, dict) else None
    out = {}
    for name in ("error", "latency_ms", "chunk_delay_ms"):
        value = headers.get("x-vkeys-fake-" + name.replace("_", "-"))
        if value is None and isinstance(metadata, dict):
            value = metadata.get("vkeys_fake_" + name)
        if value is not None:
            out[name] = str(value)
    return out


def answer(operation: str, body: dict, headers: dict[str, str], *, latency_ms: float = 0.0,
           chunk_delay_ms: float = 0.0) -> FakeAnswer:
    """Build the fake answer to one request (pure; no I/O).

    Called by :class:`FakeTransport` and by the fake HTTP server.
    """
    controls = _controls(body, headers)
    latency = _millis(controls.get("latency_ms"), latency_ms)
    chunk_delay = _millis(controls.get("chunk_delay_ms"), chunk_delay_ms)
    error = controls.get("error") or ""
    cut_after = None
    if error.isdigit() and 400 <= int(error) <= 599:
        return _error(operation, int(error), f"injected fake error {error}")
    if error.startswith("cut"):
        count = error.partition(":")[2]
        cut_after = int(count) if count.isdigit() else 2
    problem = invalid(operation, body)
    if problem:
        return _error(operation, 400, problem)
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


def _forced_tool(body: dict, dialect: str) -> dict | None:
    """The tool a request forces the model to call (``tool_choice`` "required"/"any" or
    a named tool), as ``{"name", "schema"}``; None when the model may answer in text."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    choice = body.get("tool_choice")
    if not tools or choice is None:
        return None
    if dialect == "anthropic":
        described = [(t.get("name"), t.get("input_schema")) for t in tools]
        kind = choice.get("type") if isinstance(choice, dict) else None
        wanted = choice.get("name") if kind == "tool" else None
        if kind not in ("any", "tool"):
            return None
    else:
        described = [((t.get("function") or {}).get("name") or t.get("name"),
                      (t.get("function") or {}).get("parameters") or t.get("parameters"))
                     for t in tools]
        if choice == "required":
            wanted = None
        elif isinstance(choice, dict):
            wanted = (choice.get("function") or {}).get("name") or choice.get("name")
        else:
            return None
    for name, schema in described:
        if isinstance(name, str) and (wanted is None or name == wanted):
            return {"name": name, "schema": schema if isinstance(schema, dict) else {}}
    return None


def _json_schema(body: dict) -> dict | None:
    """The JSON schema the reply must match (chat ``response_format`` or the Responses
    API's ``text.format``); ``{}`` for plain JSON mode; None for free text."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict):
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {}
    if fmt.get("type") == "json_schema":
        spec = fmt.get("json_schema") if isinstance(fmt.get("json_schema"), dict) else fmt
        schema = spec.get("schema")
        return schema if isinstance(schema, dict) else {}
    return None


def _structured(schema: dict, words: list[str]) -> str:
    """Reply text for a JSON-mode request: an instance of ``schema`` (or a small object)."""
    value = instance(schema, words) if schema else {"answer": " ".join(words[:8])}
    return orjson.dumps(value).decode()


def _tool_id(prefix: str, body: dict, index: int) -> str:
    return prefix + hashlib.sha256(_seed(body) + bytes([index % 256])).hexdigest()[:24]


def _chat(model: str, body: dict, stream: bool) -> FakeAnswer:
    n_in = prompt_tokens("chat.completions", body)
    n_out, hit_limit = output_tokens(body)
    count = body.get("n") or 1
    words = reply_words(body, n_out)
    tool = _forced_tool(body, "openai")
    schema = _json_schema(body)
    if tool is not None:
        arguments = orjson.dumps(instance(tool["schema"], words)).decode()
        call = {"id": _tool_id("call_fake", body, 0), "type": "function",
                "function": {"name": tool["name"], "arguments": arguments}}
        content, finish = None, "tool_calls"
    else:
        call = None
        content = _structured(schema, words) if schema is not None else " ".join(words)
        finish = "length" if hit_limit and schema is None else "stop"
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out * count,
             "total_tokens": n_in + n_out * count,
             "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
             "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
    cid, created = _id("chatcmpl-fake", body), int(time.time())
    if not stream:
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        if call is not None:
            message["tool_calls"] = [call]
        return _json({"id": cid, "object": "chat.completion", "created": created, "model": model,
                      "system_fingerprint": "fp_vkeys_fake",
                      "choices": [{"index": i, "message": message, "logprobs": None,
                                   "finish_reason": finish} for i in range(count)],
                      "usage": usage})
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": "fp_vkeys_fake"}
    if include_usage:
        base["usage"] = None

    def chunk(index: int, delta: dict, finish_reason: str | None = None) -> bytes:
        return _sse({**base, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                          "finish_reason": finish_reason}]})

    parts = []
    for index in range(count):
        parts.append(chunk(index, {"role": "assistant", "content": "" if call is None else None}))
        if call is not None:
            arguments = call["function"]["arguments"]
            parts.append(chunk(index, {"tool_calls": [{"index": 0, "id": call["id"],
                                                       "type": "function", "function": {
                                                           "name": tool["name"],
                                                           "arguments": ""}}]}))
            parts += [chunk(index, {"tool_calls": [{"index": 0, "function": {
                "arguments": arguments[i:i + 16]}}]}) for i in range(0, len(arguments), 16)]
        elif schema is not None:
            parts += [chunk(index, {"content": content[i:i + 16]})
                      for i in range(0, len(content), 16)]
        else:
            parts += [chunk(index, {"content": w if i == 0 else " " + w})
                      for i, w in enumerate(words)]
        parts.append(chunk(index, {}, finish))
    if include_usage:
        parts.append(_sse({**base, "choices": [], "usage": usage}))
    parts.append(b"data: [DONE]\n\n")
    return _stream(parts)


def _completion(model: str, body: dict, stream: bool) -> FakeAnswer:
    n_in = prompt_tokens("completions", body)
    n_out, hit_limit = output_tokens(body)
    count = body.get("n") or 1
    words = reply_words(body, n_out)
    usage = {"prompt_tokens": n_in, "completion_tokens": n_out * count,
             "total_tokens": n_in + n_out * count}
    base = {"id": _id("cmpl-fake", body), "object": "text_completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_vkeys_fake"}
    finish = "length" if hit_limit else "stop"
    if not stream:
        return _json({**base, "choices": [{"index": i, "text": " ".join(words), "logprobs": None,
                                           "finish_reason": finish} for i in range(count)],
                      "usage": usage})
    parts = []
    for index in range(count):
        parts += [_sse({**base, "choices": [{"index": index, "text": (" " if i else "") + w,
                                             "logprobs": None, "finish_reason": None}]})
                  for i, w in enumerate(words)]
        parts.append(_sse({**base, "choices": [{"index": index, "text": "", "logprobs": None,
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
    schema = _json_schema(body)
    text = _structured(schema, words) if schema is not None else " ".join(words)
    message = {"type": "message", "id": msg_id, "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": []}]}
    tool = _forced_tool(body, "openai")
    if tool is not None:
        call = {"type": "function_call", "id": _tool_id("fc_fake", body, 0),
                "call_id": _tool_id("call_fake", body, 0), "name": tool["name"],
                "arguments": orjson.dumps(instance(tool["schema"], words)).decode(),
                "status": "completed"}
        response = {"id": rid, "object": "response", "created_at": int(time.time()),
                    "model": model, "status": "completed", "incomplete_details": None,
                    "output": [call], "parallel_tool_calls": True, "tool_choice": "required",
                    "tools": body.get("tools") or [], "usage": usage,
                    "metadata": {"vkeys_fake": "true"}}
        if not stream:
            return _json(response)
        pending = {**response, "status": "in_progress", "output": [], "usage": None}
        return _stream([
            _sse({"type": "response.created", "sequence_number": 0, "response": pending},
                 "response.created"),
            _sse({"type": "response.output_item.added", "sequence_number": 1, "output_index": 0,
                  "item": {**call, "arguments": "", "status": "in_progress"}},
                 "response.output_item.added"),
            _sse({"type": "response.function_call_arguments.delta", "sequence_number": 2,
                  "item_id": call["id"], "output_index": 0, "delta": call["arguments"]},
                 "response.function_call_arguments.delta"),
            _sse({"type": "response.function_call_arguments.done", "sequence_number": 3,
                  "item_id": call["id"], "output_index": 0, "arguments": call["arguments"]},
                 "response.function_call_arguments.done"),
            _sse({"type": "response.output_item.done", "sequence_number": 4, "output_index": 0,
                  "item": call}, "response.output_item.done"),
            _sse({"type": "response.completed", "sequence_number": 5, "response": response},
                 "response.completed")])
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
    pieces = ([text[i:i + 16] for i in range(0, len(text), 16)] if schema is not None
              else [w if i == 0 else " " + w for i, w in enumerate(words)])
    for piece in pieces:
        parts.append(_sse({"type": "response.output_text.delta", "sequence_number": next(seq),
                           "item_id": msg_id, "output_index": 0, "content_index": 0,
                           "delta": piece, "logprobs": []}, "response.output_text.delta"))
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
    tool = _forced_tool(body, "anthropic")
    if tool is not None:
        return _tool_use(model, body, stream, tool, mid, usage, words)
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


def _tool_use(model: str, body: dict, stream: bool, tool: dict, mid: str, usage: dict,
              words: list[str]) -> FakeAnswer:
    """An Anthropic answer that calls the forced tool (``stop_reason: tool_use``)."""
    arguments = instance(tool["schema"], words)
    block = {"type": "tool_use", "id": _tool_id("toolu_fake", body, 0), "name": tool["name"],
             "input": arguments}
    if not stream:
        return _json({"id": mid, "type": "message", "role": "assistant", "model": model,
                      "content": [block], "stop_reason": "tool_use", "stop_sequence": None,
                      "usage": usage})
    encoded = orjson.dumps(arguments).decode()
    parts = [_sse({"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}},
        "message_start"),
        _sse({"type": "content_block_start", "index": 0,
              "content_block": {**block, "input": {}}}, "content_block_start")]
    parts += [_sse({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": encoded[i:i + 16]}},
                   "content_block_delta") for i in range(0, len(encoded), 16)]
    parts.append(_sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    parts.append(_sse({"type": "message_delta", "delta": {"stop_reason": "tool_use",
                                                          "stop_sequence": None},
                       "usage": {"output_tokens": usage["output_tokens"]}}, "message_delta"))
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
            elif i and not i % 32:
                await asyncio.sleep(0)  # a long stream must not hold the loop
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
