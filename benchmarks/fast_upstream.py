"""A fast fake LLM upstream for benchmarks: canned OpenAI answers, keep-alive, optional TLS.

Minimal HTTP/1.1 on an asyncio Protocol (uvloop when available), so the
upstream costs far less than the proxies measured in front of it:

- ``POST /v1/chat/completions`` -> a fixed JSON completion, or with
  ``"stream": true`` 20 content chunks, a finish chunk, a usage chunk and
  ``[DONE]`` (chunked transfer encoding), all in one write, or one event per
  millisecond, each stamped with its write time, when the body holds
  ``"user": "bench-spaced"``;
- ``GET /stats`` -> connections accepted (to check that proxies reuse them).

Run: ``python benchmarks/fast_upstream.py --port 9200 [--tls]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import time

USAGE = {"prompt_tokens": 9, "completion_tokens": 20, "total_tokens": 29,
         "prompt_tokens_details": {"cached_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0}}
COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 20},
                 "finish_reason": "stop"}], "usage": USAGE}).encode()


def _chunk(delta: dict, finish=None, usage=None, choices=True) -> bytes:
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    data = b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"transfer-encoding: chunked\r\n\r\n")
STREAM_PARTS = ([_chunk({"role": "assistant", "content": ""})]
                + [_chunk({"content": f" w{i}"}) for i in range(20)]
                + [_chunk({}, "stop")])
STREAM_USAGE = _chunk({}, usage=USAGE, choices=False)
STREAM_DONE = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
JSON_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
             + str(len(COMPLETION)).encode() + b"\r\n\r\n")

STATS = {"connections": 0, "requests": 0}
# A streaming request whose body holds this marker (the OpenAI ``user`` field, which
# proxies pass through) gets its 21 content events one by one, SPACING_S apart, each
# stamped with the time.monotonic() of its write ("bench_ts"): CLOCK_MONOTONIC is one
# clock for every process, so a client measures each event's one-way delay exactly,
# whatever the timers' granularity.
SPACED = b"bench-spaced"
SPACING_S = 0.001


def _stamped(index: int) -> bytes:
    delta = {"role": "assistant", "content": ""} if index == 0 else {"content": f" w{index}"}
    body = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
            "model": "gpt-4o-mini", "bench_ts": time.monotonic(),
            "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    data = b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(data), data)


class Upstream(asyncio.Protocol):
    """One client connection: parse requests, answer from canned bytes."""

    def connection_made(self, transport) -> None:
        STATS["connections"] += 1
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0
                                  else None].strip())
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4:end + 4 + length]
            self.buffer = self.buffer[end + 4 + length:]
            STATS["requests"] += 1
            self.answer(head, body)

    def answer(self, head: bytes, body: bytes) -> None:
        if head.startswith(b"get /stats"):
            data = json.dumps(STATS).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\n\r\n%s" % (len(data), data))
        elif b'"stream":true' in body or b'"stream": true' in body:
            usage = STREAM_USAGE if b"include_usage" in body else b""
            if SPACED in body:  # one event per write, SPACING_S apart, like a model
                self.transport.write(STREAM_HEAD + _stamped(0))
                loop = asyncio.get_running_loop()
                for i in range(1, 21):
                    loop.call_later(i * SPACING_S, self._send_if_open, i)
                tail = _chunk({}, "stop") + usage + STREAM_DONE
                loop.call_later(21 * SPACING_S, self._send_if_open, tail)
                return
            self.transport.write(STREAM_HEAD + b"".join(STREAM_PARTS) + usage + STREAM_DONE)
        else:
            self.transport.write(JSON_HEAD + COMPLETION)


    def _send_if_open(self, part: int | bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(_stamped(part) if isinstance(part, int) else part)


def self_signed(directory: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI), returns (cert, key)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True,
                   capture_output=True)
    return cert, key


async def serve(port: int, cert: str | None, key: str | None) -> None:
    context = None
    if cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
    server = await asyncio.get_running_loop().create_server(Upstream, "127.0.0.1", port,
                                                            ssl=context, backlog=1024)
    print(f"upstream ready on {port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.cert, args.key))


if __name__ == "__main__":
    main()
