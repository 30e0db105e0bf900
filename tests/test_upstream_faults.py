"""Upstream faults through the gateway: the gateway (lean client behind the lean front, and
aiohttp behind tornado's front, as inside Jupyter) pointed at a raw-socket upstream that
misbehaves on purpose (tests/misbehaving.py), driven by the official SDKs or raw sockets.

For every fault: the client's error in its dialect, the budget hold released (or what
the provider may bill charged and flagged estimated), the concurrency slot freed, and
exactly one event with the right status. Read timeouts are 1 s so the suite stays quick.
"""

from __future__ import annotations

import json
import socket
import time

import anthropic
import openai
import pytest

from misbehaving import Misbehaving, gzipped, response
from support import REAL_ANTHROPIC_KEY, REAL_OPENAI_KEY, anthropic_client, free_port, \
    openai_client

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello " * 40}],
        "max_tokens": 50}
MESSAGES = {"model": "claude-haiku-4-5", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hello " * 40}]}


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def completion(usage: bool = True) -> bytes:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi there"},
                         "finish_reason": "stop"}]}
    if usage:
        body["usage"] = {"prompt_tokens": 80, "completion_tokens": 3, "total_tokens": 83}
    return compact(body)


def sse_delta(text: str) -> bytes:
    return b"data: " + compact({"id": "c", "object": "chat.completion.chunk", "created": 1,
                                "model": "gpt-4o-mini",
                                "choices": [{"index": 0, "delta": {"content": text},
                                             "finish_reason": None}]}) + b"\n\n"


STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"transfer-encoding: chunked\r\n\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Setup:
    """A misbehaving upstream, a gateway relaying to it, and a budget-capped key."""

    def __init__(self, make_gateway, monkeypatch, script, client: str, dead: bool = False,
                 tls=None, ca_file: str = "", **traits) -> None:
        self.up = Misbehaving(script, tls=tls)
        monkeypatch.setenv("TEST_OPENAI_KEY", REAL_OPENAI_KEY)
        monkeypatch.setenv("TEST_ANTHROPIC_KEY", REAL_ANTHROPIC_KEY)
        base = f"http://127.0.0.1:{free_port()}" if dead else self.up.url
        traits = {"read_timeout": 1.0, "connect_timeout": 1.0, **traits}
        self.gw = make_gateway(
            providers={"openai": {"kind": "openai", "base_url": base + "/v1",
                                  "api_key_env": "TEST_OPENAI_KEY", "ca_file": ca_file},
                       "anthropic": {"kind": "anthropic", "base_url": base,
                                     "api_key_env": "TEST_ANTHROPIC_KEY", "ca_file": ca_file}},
            upstream_client=client,
            fake_mode="never", front="lean" if client == "lean" else "tornado", **traits)
        self.key, created = self.gw.create_key(
            owner="alice", max_concurrency=1, budgets=[{"usd": 10, "period": "total"}])
        self.key_id = created["id"]

    def openai(self):
        return openai_client(self.gw, self.key)

    def anthropic(self):
        return anthropic_client(self.gw, self.key)

    def state(self) -> dict:
        status, view = self.gw.admin("GET", f"/keys/{self.key_id}")
        assert status == 200, view
        scope = view["limits"][0]
        return {"held": scope["budgets"][0]["held_usd"], "spent": scope["budgets"][0]["spent_usd"],
                "in_flight": scope["in_flight"]}

    def event(self, timeout: float = 3.0) -> dict:
        """The key's one event (waits for it: cancelled calls settle after the client left)."""
        deadline = time.monotonic() + timeout
        while True:
            events = [e for e in self.gw.events if e["key_id"] == self.key_id]
            if events or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert len(events) == 1, events
        return events[0]

    def assert_released(self, charged: bool) -> dict:
        """Hold back to 0, slot free, spend > 0 exactly when the call may be billed."""
        state = self.state()
        assert state["held"] == 0 and state["in_flight"] == 0, state
        assert (state["spent"] > 0) == charged, state
        return state

    def stop(self) -> None:
        self.up.stop()


@pytest.fixture(params=["lean", "aiohttp"])
def setup(request, make_gateway, monkeypatch):
    made = []

    def factory(script, **kwargs) -> Setup:
        made.append(Setup(make_gateway, monkeypatch, script, request.param, **kwargs))
        return made[-1]
    yield factory
    for one in made:
        one.stop()


# -- the upstream answers an error ------------------------------------------------------

def test_5xx_is_relayed_and_costs_nothing(setup):
    s = setup(lambda n, h, b: [response(503, b'{"error": {"message": "overloaded"}}',
                                         reason="Service Unavailable")])
    with pytest.raises(openai.InternalServerError) as err:
        s.openai().chat.completions.create(**CHAT)
    assert err.value.status_code == 503 and "overloaded" in str(err.value)
    event = s.event()
    assert (event["status"], event["http_status"]) == ("upstream_error", 503)
    assert not event["usage_estimated"] and event["cost_pico"] == 0
    s.assert_released(charged=False)


def test_provider_429_is_relayed_with_retry_after(setup):
    s = setup(lambda n, h, b: [response(429, b'{"type": "error", "error": {"type": '
                                             b'"rate_limit_error", "message": "slow down"}}',
                                        [("retry-after", "7")], reason="Too Many Requests")])
    with pytest.raises(anthropic.RateLimitError) as err:
        s.anthropic().messages.create(**MESSAGES)
    assert err.value.response.headers["retry-after"] == "7"
    assert "slow down" in str(err.value)
    assert s.event()["http_status"] == 429
    s.assert_released(charged=False)


def test_provider_key_echoed_in_a_401_is_scrubbed(setup):
    echo = (b'{"error": {"message": "Incorrect API key provided: Bearer ' +
            REAL_OPENAI_KEY.encode() + b'", "type": "invalid_request_error"}}')
    s = setup(lambda n, h, b: [response(401, echo, [
        ("www-authenticate", f"Bearer realm=api, key={REAL_OPENAI_KEY}"),
        ("x-debug-auth", REAL_ANTHROPIC_KEY)], reason="Unauthorized")])
    with pytest.raises(openai.AuthenticationError) as err:
        s.openai().chat.completions.create(**CHAT)
    raw = err.value.response
    everything = raw.text + json.dumps(dict(raw.headers))
    assert REAL_OPENAI_KEY not in everything and REAL_ANTHROPIC_KEY not in everything
    assert "[redacted]" in raw.text and "[redacted]" in raw.headers["www-authenticate"]
    event = s.event()
    assert REAL_OPENAI_KEY not in json.dumps(event) and "[redacted]" in event["error_message"]
    # The real key did go upstream (the scrubbing is on the way back only).
    assert REAL_OPENAI_KEY.encode() in s.up.heads[0]


def test_anthropic_key_echo_is_scrubbed(setup):
    body = compact({"type": "error", "error": {"type": "authentication_error",
                                               "message": f"invalid x-api-key {REAL_ANTHROPIC_KEY}"}})
    s = setup(lambda n, h, b: [response(401, body, [("x-echo-api-key", REAL_ANTHROPIC_KEY)],
                                        reason="Unauthorized")])
    with pytest.raises(anthropic.AuthenticationError) as err:
        s.anthropic().messages.create(**MESSAGES)
    raw = err.value.response
    assert REAL_ANTHROPIC_KEY not in raw.text + json.dumps(dict(raw.headers))
    assert raw.headers["x-echo-api-key"] == "[redacted]"
    assert REAL_ANTHROPIC_KEY not in json.dumps(s.event())
    s.assert_released(charged=False)


def test_key_echoed_in_a_malformed_head_is_scrubbed(setup):
    s = setup(lambda n, h, b: [f"HTTP/1.1 40X Bearer {REAL_OPENAI_KEY}\r\nx: {REAL_OPENAI_KEY}"
                               f"\r\n\r\n".encode(), "close"])
    with pytest.raises(openai.APIStatusError) as err:
        s.openai().chat.completions.create(**CHAT)
    assert err.value.status_code == 502
    assert "upstream answered badly" in err.value.body["message"]
    assert REAL_OPENAI_KEY not in err.value.response.text + json.dumps(s.event())


# -- the upstream cannot be reached or breaks -----------------------------------------

def test_connection_refused_is_a_502_in_both_dialects(setup):
    s = setup(lambda n, h, b: [], dead=True)
    with pytest.raises(openai.APIStatusError) as err:
        s.openai().chat.completions.create(**CHAT)
    assert err.value.status_code == 502
    assert err.value.body["type"] == "upstream_error"
    assert "upstream unreachable" in err.value.body["message"]
    with pytest.raises(anthropic.APIStatusError) as err:
        s.anthropic().messages.create(**MESSAGES)
    assert err.value.status_code == 502 and err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "api_error"
    events = [e for e in s.gw.events if e["key_id"] == s.key_id]
    assert [e["status"] for e in events] == ["upstream_error"] * 2
    assert not any(e["usage_estimated"] for e in events)
    s.assert_released(charged=False)


@pytest.mark.parametrize("when", ["before_headers", "mid_body"])
def test_reset_is_a_502_and_charges_the_input(setup, when):
    script = {"before_headers": ["reset"],
              "mid_body": [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                           b"content-length: 500\r\n\r\n{\"id\": \"chat", 0.05, "reset"]}[when]
    s = setup(lambda n, h, b: script)
    with pytest.raises(openai.APIStatusError) as err:
        s.openai().chat.completions.create(**CHAT)
    assert err.value.status_code == 502
    event = s.event()
    assert event["status"] == "upstream_error" and event["usage_estimated"]
    assert event["input_tokens"] > 0 and event["output_tokens"] == 0
    s.assert_released(charged=True)
    assert s.up.requests == 1


def test_hang_is_a_504_and_the_upstream_is_let_go(setup):
    s = setup(lambda n, h, b: ["hang"])
    started = time.monotonic()
    with pytest.raises(anthropic.APIStatusError) as err:
        s.anthropic().messages.create(**MESSAGES)
    assert err.value.status_code == 504 and time.monotonic() - started < 5
    assert err.value.body["error"]["type"] == "timeout_error"
    assert "read timeout of 1 s" in err.value.body["error"]["message"]
    event = s.event()
    assert event["status"] == "timeout" and event["usage_estimated"]
    s.assert_released(charged=True)
    assert s.up.wait_for(lambda: s.up.client_closed == 1, 2)
    assert s.up.requests == 1


def test_stream_cut_after_n_chunks_charges_what_was_produced(setup):
    s = setup(lambda n, h, b: [STREAM_HEAD, *(chunk(sse_delta(f"w{i} ")) for i in range(4)),
                               0.05, "reset"])
    seen = []
    with pytest.raises(Exception):
        for part in s.openai().chat.completions.create(**CHAT, stream=True):
            seen.append(part.choices[0].delta.content)
    assert seen[:4] == ["w0 ", "w1 ", "w2 ", "w3 "]
    event = s.event()
    assert event["status"] == "upstream_error" and event["usage_estimated"]
    assert event["output_tokens"] == 4 and event["input_tokens"] > 0
    s.assert_released(charged=True)


# -- answers that are not what they should be -------------------------------------------

def test_malformed_json_is_a_502(setup):
    s = setup(lambda n, h, b: [response(200, b'{"id": "chatcmpl-1", "choices": [')])
    with pytest.raises(openai.APIStatusError) as err:
        s.openai().chat.completions.create(**CHAT)
    assert err.value.status_code == 502 and "not valid JSON" in err.value.body["message"]
    event = s.event()
    assert event["status"] == "upstream_error" and event["usage_estimated"]
    s.assert_released(charged=True)


@pytest.mark.parametrize("stream", [False, True])
def test_no_usage_is_estimated_and_flagged(setup, stream):
    if stream:
        script = [STREAM_HEAD, chunk(sse_delta("a ")), chunk(sse_delta("b ")),
                  chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]
    else:
        script = [response(200, completion(usage=False))]
    s = setup(lambda n, h, b: script)
    if stream:
        text = "".join(p.choices[0].delta.content or "" for p in
                       s.openai().chat.completions.create(**CHAT, stream=True) if p.choices)
        assert text == "a b "
    else:
        assert s.openai().chat.completions.create(**CHAT).choices[0].message.content == "hi there"
    event = s.event()
    assert event["status"] == "ok" and event["usage_estimated"]
    assert event["input_tokens"] > 0 and event["output_tokens"] > 0
    if stream:
        assert event["output_tokens"] == 2
    s.assert_released(charged=True)


def test_gzip_despite_identity_is_decoded_and_metered(setup):
    s = setup(lambda n, h, b: [gzipped(completion())])
    reply = s.openai().chat.completions.create(**CHAT)
    assert reply.usage.prompt_tokens == 80 and reply.choices[0].message.content == "hi there"
    event = s.event()
    assert event["status"] == "ok" and not event["usage_estimated"]
    assert (event["input_tokens"], event["output_tokens"]) == (80, 3)
    assert b"accept-encoding: identity" in s.up.heads[0].lower()
    s.assert_released(charged=True)


def test_gzip_stream_is_decoded_and_metered(setup):
    import zlib
    packer = zlib.compressobj(wbits=31)
    usage = b"data: " + compact({"id": "c", "object": "chat.completion.chunk", "created": 1,
                                 "model": "gpt-4o-mini", "choices": [],
                                 "usage": {"prompt_tokens": 80, "completion_tokens": 2,
                                           "total_tokens": 82}}) + b"\n\n"
    parts = [packer.compress(sse_delta("a ")) + packer.flush(zlib.Z_SYNC_FLUSH),
             packer.compress(usage + b"data: [DONE]\n\n") + packer.flush()]
    s = setup(lambda n, h, b: [STREAM_HEAD.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip"
                                                   b"\r\n\r\n"), *map(chunk, parts),
                               b"0\r\n\r\n"])
    text = "".join(p.choices[0].delta.content or "" for p in
                   s.openai().chat.completions.create(**CHAT, stream=True) if p.choices)
    assert text == "a "
    event = s.event()
    assert not event["usage_estimated"] and event["output_tokens"] == 2


def test_close_delimited_answer_is_relayed(setup):
    s = setup(lambda n, h, b: [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n",
                               completion(), "close"])
    assert s.openai().chat.completions.create(**CHAT).usage.completion_tokens == 3
    assert s.event()["status"] == "ok"
    s.assert_released(charged=True)


def test_oversized_answer_is_a_502(setup):
    s = setup(lambda n, h, b: [response(200, b'{"pad": "' + b"x" * 5000 + b'"}')],
              max_response_bytes=4096)
    with pytest.raises(openai.APIStatusError) as err:
        s.openai().chat.completions.create(**CHAT)
    assert err.value.status_code == 502
    assert "limit of 4096 bytes (max_response_bytes)" in err.value.body["message"]
    assert s.event()["status"] == "upstream_error"
    s.assert_released(charged=True)


# -- the client leaves ----------------------------------------------------------------

def raw_call(s: Setup, body: dict, read_until: bytes | None = None, seen: bytearray | None = None
             ) -> socket.socket:
    """Send a chat call on a raw socket; return it (after ``read_until`` arrived, if set;
    what was read is added to ``seen``)."""
    data = compact(body)
    sock = socket.create_connection(("127.0.0.1", s.gw.port), timeout=5)
    path = s.gw.gateway.prefix + "/openai/v1/chat/completions"
    sock.sendall(f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {s.key}\r\n"
                 f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
                 .encode() + data)
    seen = bytearray() if seen is None else seen
    while read_until is not None and read_until not in seen:
        seen += sock.recv(65536)
    return sock


@pytest.mark.parametrize("when", ["before_headers", "mid_stream"])
def test_client_leaving_cancels_the_upstream_and_pays(setup, when):
    if when == "before_headers":
        script = ["hang"]
    else:
        script = [STREAM_HEAD, *(chunk(sse_delta(f"w{i} ")) for i in range(3)), "hang"]
    s = setup(lambda n, h, b: script, read_timeout=30.0)
    sock = raw_call(s, {**CHAT, "stream": when == "mid_stream"},
                    read_until=b"w2" if when == "mid_stream" else None)
    assert s.up.wait_for(lambda: s.up.requests == 1, 2)
    time.sleep(0.1)
    sock.close()
    # The upstream sees the call end at once (not at the 30 s read timeout).
    assert s.up.wait_for(lambda: s.up.client_closed == 1, 2), "upstream connection leaked"
    event = s.event()
    assert event["status"] == "cancelled" and event["usage_estimated"]
    assert event["input_tokens"] > 0
    assert event["output_tokens"] == (3 if when == "mid_stream" else 0)
    assert event["cost_pico"] > 0
    s.assert_released(charged=True)
    assert s.up.open == 0


# -- TLS and proxies, through the gateway ----------------------------------------------

@pytest.fixture(scope="module")
def ca():
    import trustme
    return trustme.CA()


def tls_server(ca, *names):
    import ssl
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def test_tls_upstream_with_a_custom_ca(setup, ca, tmp_path):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    s = setup(lambda n, h, b: [response(200, completion())], tls=tls_server(ca, "127.0.0.1"),
              ca_file=str(ca_file))
    assert s.openai().chat.completions.create(**CHAT).usage.prompt_tokens == 80
    assert s.event()["status"] == "ok"


@pytest.mark.parametrize("case", ["unknown_ca", "wrong_hostname"])
def test_tls_failures_are_a_clear_502(setup, ca, tmp_path, case):
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    names = ("127.0.0.1",) if case == "unknown_ca" else ("api.example.test",)
    s = setup(lambda n, h, b: [response(200, completion())], tls=tls_server(ca, *names),
              ca_file="" if case == "unknown_ca" else str(ca_file))
    with pytest.raises(anthropic.APIStatusError) as err:
        s.anthropic().messages.create(**MESSAGES)
    assert err.value.status_code == 502
    message = err.value.body["error"]["message"]
    assert message.startswith("upstream TLS failed: the TLS certificate of 127.0.0.1:")
    if case == "unknown_ca":
        assert "ca_file" in message
    else:
        assert "mismatch" in message.lower() or "hostname" in message.lower()
    event = s.event()
    assert event["status"] == "upstream_error" and not event["usage_estimated"]
    s.assert_released(charged=False)
    assert s.up.requests == 0


def test_upstream_through_a_connect_proxy(setup, ca, tmp_path):
    from misbehaving import ConnectProxy
    proxy = ConnectProxy()
    try:
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        s = setup(lambda n, h, b: [response(200, completion())],
                  tls=tls_server(ca, "127.0.0.1"), ca_file=str(ca_file),
                  upstream_proxy=proxy.url, upstream_no_proxy="")
        for _ in range(2):
            assert s.openai().chat.completions.create(**CHAT).usage.completion_tokens == 3
        # Every tunnel goes to the upstream. Usually the second call reuses the first
        # tunnel; in about one full-suite run in three a second tunnel is opened (a known
        # issue, cause not yet found: see the closing note of 2026-12-01).
        assert set(proxy.targets) == {f"127.0.0.1:{s.up.port}"} and len(proxy.targets) <= 2
    finally:
        proxy.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_half_closed_client_still_gets_its_answer(setup, stream):
    """FIN after the request is not always a client that left: one that only half-closed
    (``shutdown(SHUT_WR)``) still reads, and gets its whole answer (HTTP/1.1 interim
    responses and SSE comments it is sent meanwhile are skipped by every client)."""
    if stream:
        script = [0.3, STREAM_HEAD, chunk(sse_delta("a ")), 0.3, chunk(sse_delta("b ")),
                  chunk(b"data: [DONE]\n\n"), b"0\r\n\r\n"]
    else:
        script = [0.3, response(200, completion())]
    s = setup(lambda n, h, b: script)
    if s.gw.front != "lean":
        pytest.skip("tornado's front takes a FIN for a client that left")
    data = bytearray()
    sock = raw_call(s, {**CHAT, "stream": stream}, read_until=b"a " if stream else None,
                    seen=data)
    sock.shutdown(socket.SHUT_WR)
    while chunk_ := sock.recv(65536):
        data += chunk_
    sock.close()
    data = bytes(data)
    head, _, body = data.partition(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data[:200]
    if stream:
        assert b"[DONE]" in body and b'"b "' in body
    else:
        assert b"hi there" in body
    event = s.event()
    assert event["status"] == "ok" and event["usage_estimated"] == stream  # no usage streamed
    s.assert_released(charged=True)
