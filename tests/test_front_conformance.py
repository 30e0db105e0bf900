"""HTTP/1.1 conformance of the two fronts, over raw sockets.

Every case runs against the standalone server's lean front (httptools, the data
plane's hot path) and against tornado's HTTP server alone (the data plane as it
runs inside a Jupyter server), so the two can be compared. Where tornado
legitimately answers otherwise (a bare ``400`` without a body, tornado's own
limits and timeouts, which its host configures), the case says so in its
expectations rather than skipping.

What is covered: the request-smuggling corpus (CL+TE, duplicate CL, obs-fold, bad
chunk sizes, chunk extensions, trailers, bare LF), head and URL limits with the
bytes read before the refusal bounded, head/body/idle deadlines, pipelining across
lean and bridged routes and after 400/413/431, ``Expect: 100-continue``,
HEAD/204/304, HTTP/1.0 with and without keep-alive, bad Host; and two property
tests (hypothesis): any split of a pipelined stream into reads gives the same
answers, and random bytes never hang the server or get a 5xx.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_lean_server import CHAT, PATH, _RawUpstream, request_bytes

FRONTS = ["lean", "tornado"]
SENTINEL = b"GET /vkeys/sentinel HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n"
INNER = b"GET /vkeys/inner-smuggled HTTP/1.1\r\nhost: t\r\n\r\n"
COUNT = "/vkeys/anthropic/v1/messages/count_tokens"  # no key sent: 401, whatever the body


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    raw_head: bytes = b""


@dataclass
class Conversation:
    replies: list[Reply] = field(default_factory=list)
    closed: bool = False
    raw: bytes = b""

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.replies]


def parse_replies(data: bytes, head_requests: set[int] = frozenset()) -> list[Reply]:
    """Every complete response in ``data``, in order (``head_requests``: indexes, among
    the final responses, of answers to HEAD, which carry no body)."""
    replies: list[Reply] = []
    final = 0
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status < 200 or status in (204, 304) or final in head_requests:
            body = b""
        elif "content-length" in headers:
            size = int(headers["content-length"])
            if len(rest) < size:
                break
            body, rest = rest[:size], rest[size:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, sep, rest = rest.partition(b"\r\n")
                if not sep:
                    return replies
                size = int(size_line, 16)
                body, rest = body + rest[:size], rest[size + 2:]
                if size == 0:
                    break
        else:
            body, rest = rest, b""
        replies.append(Reply(status, headers, body, head))
        if status >= 200:
            final += 1
        data = rest
    return replies


def converse(gw, pieces: bytes | list[bytes], *, pause: float = 0.0, wait: float = 3.0,
             head_requests: set[int] = frozenset()) -> Conversation:
    """Send ``pieces`` (``pause`` s apart, so each arrives as its own read), then read
    until the server closes or stays silent for ``wait`` s."""
    if isinstance(pieces, bytes):
        pieces = [pieces]
    out = Conversation()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=wait) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for piece in pieces:
                sock.sendall(piece)
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
            out.closed = True
        except ConnectionResetError:
            out.closed = True
        except socket.timeout:
            pass
    out.raw = data
    out.replies = parse_replies(data, head_requests)
    return out


@pytest.fixture(params=FRONTS)
def front(request) -> str:
    return request.param


@pytest.fixture
def gw(make_gateway, front):
    return make_gateway(fake_mode="always", max_body_bytes=4096, front=front)


def bare_400(reply: Reply) -> bool:
    """tornado's answer to what it cannot parse: ``400`` with no headers or body."""
    return reply.status == 400 and not reply.headers and not reply.body


def json_refusal(reply: Reply, status: int, dialect: str = "openai") -> str:
    """The message of a JSON refusal in ``dialect`` (asserting its shape)."""
    assert reply.status == status, reply
    assert reply.headers["content-type"] == "application/json"
    body = json.loads(reply.body)
    assert (body.get("type") == "error") == (dialect == "anthropic"), body
    return body["error"]["message"]


# -- the smuggling corpus -------------------------------------------------------------------
def _post(headers: str, body: bytes, *, path: str = COUNT, line_end: str = "\r\n") -> bytes:
    head = f"POST {path} HTTP/1.1{line_end}host: t{line_end}{headers}{line_end}"
    return head.replace("\r\n", line_end).encode() + body


# name -> (request, lean outcome, tornado outcome). Outcomes: "reject" (400, then the
# connection closes: nothing after it is read as a request) or "accept" (the request is
# answered, 401 here since no key is sent, then the sentinel after it).
CORPUS = {
    "CL+TE": (_post("content-length: 4\r\ntransfer-encoding: chunked\r\n", b"0\r\n\r\n" + INNER),
              "reject", "reject"),
    "TE+CL": (_post("transfer-encoding: chunked\r\ncontent-length: 40\r\n", b"0\r\n\r\n" + INNER),
              "reject", "reject"),
    "duplicate CL, differing": (_post("content-length: 2\r\ncontent-length: 47\r\n",
                                      b"{}" + INNER), "reject", "reject"),
    # identical duplicates: llhttp refuses them all; tornado merges equal values (safe too)
    "duplicate CL, equal": (_post("content-length: 2\r\ncontent-length: 2\r\n", b"{}"),
                            "reject", "accept"),
    "CL list": (_post("content-length: 2, 2\r\n", b"{}"), "reject", "accept"),
    "CL with sign": (_post("content-length: +2\r\n", b"{}"), "reject", "reject"),
    "CL not a number": (_post("content-length: 2x\r\n", b"{}"), "reject", "reject"),
    "space before colon": (_post("content-length : 2\r\n", b"{}" + INNER), "reject", "reject"),
    "obs-fold": (_post("content-length: 2\r\nx-folded: a\r\n b\r\n", b"{}"), "reject", "reject"),
    "obs-fold of TE": (_post("content-length: 2\r\ntransfer-encoding:\r\n chunked\r\n",
                             b"{}" + INNER), "reject", "reject"),
    "TE not chunked": (_post("transfer-encoding: xchunked\r\n", b"0\r\n\r\n" + INNER),
                       "reject", "reject"),
    "TE chunked, identity": (_post("transfer-encoding: chunked, identity\r\n",
                                   b"0\r\n\r\n" + INNER), "reject", "reject"),
    "bad chunk size": (_post("transfer-encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"),
                       "reject", "reject"),
    "negative chunk size": (_post("transfer-encoding: chunked\r\n", b"-2\r\n{}\r\n0\r\n\r\n"),
                            "reject", "reject"),
    "chunk size overflow": (_post("transfer-encoding: chunked\r\n",
                                  b"1" + b"0" * 20 + b"\r\n{}\r\n0\r\n\r\n"), "reject", "reject"),
    "chunk without CRLF": (_post("transfer-encoding: chunked\r\n", b"2\r\n{}XX0\r\n\r\n"),
                           "reject", "reject"),
    # chunk extensions (RFC 9112 7.1.1) are ignored by the lean front; tornado refuses them
    "chunk extension": (_post("transfer-encoding: chunked\r\n", b"2;name=value\r\n{}\r\n0\r\n\r\n"),
                        "accept", "reject"),
    # trailers: read and ignored by the lean front (never taken for headers); tornado
    # refuses any
    "trailer": (_post("transfer-encoding: chunked\r\n", b"2\r\n{}\r\n0\r\nx-trailer: 1\r\n\r\n"),
                "accept", "reject"),
    # bare LF line ends: llhttp refuses them; tornado reads them as line ends
    "bare LF": (_post("content-length: 2\n", b"{}", line_end="\n"), "reject", "accept"),
    "NUL in a header": (_post("content-length: 2\r\nx-nul: a\0b\r\n", b"{}"), "reject", "reject"),
    "LF in the request line": (b"POST /vkeys/a\nb HTTP/1.1\r\nhost: t\r\n\r\n", "reject",
                               "reject"),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_smuggling_corpus(gw, front, case):
    request, lean, tornado_outcome = CORPUS[case]
    expected = lean if front == "lean" else tornado_outcome
    talk = converse(gw, request + SENTINEL)
    assert b"inner-smuggled" not in talk.raw  # no hidden request is ever answered
    assert all(s < 500 for s in talk.statuses), talk.statuses
    assert talk.closed
    if expected == "reject":
        assert talk.statuses == [400], (case, talk.raw[:300])
        if front == "lean":
            dialect = "anthropic" if request.startswith(f"POST {COUNT}".encode()) else "openai"
            assert "malformed HTTP request" in json_refusal(talk.replies[0], 400, dialect)
        else:
            assert bare_400(talk.replies[0])
    else:
        assert talk.statuses == [401, 404], (case, talk.raw[:300])
        assert b"/vkeys/sentinel" in talk.replies[1].body


# -- limits ------------------------------------------------------------------------------------
def test_head_limit_however_split(gw, front):
    """One 10 MB header sent in 4 KB pieces: refused once the head passes 64 KiB (the
    lean front answers 431; tornado closes without answering), after a bounded number
    of bytes rather than all of them."""
    import select

    sent = 0
    data = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\nx-huge: ")
        try:
            for _ in range(2560):
                if select.select([sock], [], [], 0.001)[0]:
                    break  # answered (or closed)
                sock.sendall(b"y" * 4096)
                sent += 4096
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if front == "lean":  # answered within one read of the limit
        assert data.startswith(b"HTTP/1.1 431 ")
        assert sent < 1 << 20  # (beyond the limit: the kernel's socket buffers)
    else:  # tornado: closed without an answer, long before 10 MB
        assert data == b""
        assert sent < 8 * 1024 * 1024


def test_url_limit(gw, front):
    url = "/vkeys/openai/v1/models?" + "q" * 20000
    talk = converse(gw, [f"GET {url[:5000]}".encode(), url[5000:].encode(),
                         b" HTTP/1.1\r\nhost: t\r\n\r\n"], pause=0.05)
    if front == "lean":
        assert talk.statuses == [414] and talk.closed
        assert "exceeds the gateway's limit of 16384 bytes" in json_refusal(talk.replies[0],
                                                                           414)
    else:  # tornado: one limit for the whole head (64 KiB); the URL is within it
        assert talk.statuses == [401]


# -- deadlines (the lean front's; tornado's are its host's HTTPServer arguments) ---------------
@pytest.fixture
def quick(make_gateway, front):
    return make_gateway(fake_mode="always", max_body_bytes=4096, head_timeout=0.5,
                        body_timeout=0.5, idle_timeout=0.5, front=front)


def test_head_body_and_idle_deadlines(quick, front):
    key, _ = quick.create_key()
    head = f"POST {PATH} HTTP/1.1\r\nhost: t\r\nx-slow: {'z' * 60}\r\n".encode()
    slow_head = converse(quick, [head[i:i + 1] for i in range(len(head))], pause=0.02,
                         wait=2.5)
    data = json.dumps(CHAT).encode()
    whole = request_bytes(key, data)
    slow_body = converse(quick, [whole[:-len(data)]] + [data[i:i + 1] for i in
                                                        range(len(data))], pause=0.02,
                         wait=2.5)
    idle = converse(quick, whole, wait=2.5)
    if front == "tornado":  # no deadline configured on tornado's HTTPServer here
        assert slow_head.statuses == [] and not slow_head.closed
        assert slow_body.statuses == [200] and not idle.closed
        return
    assert slow_head.statuses == [408] and slow_head.closed
    assert "request line and headers not received" in json_refusal(slow_head.replies[0], 408)
    assert slow_body.statuses == [408] and slow_body.closed
    assert "request body not received" in json_refusal(slow_body.replies[0], 408)
    assert idle.statuses == [200] and idle.closed  # kept alive, then closed when idle


# -- pipelining ------------------------------------------------------------------------------
def test_pipelining_across_lean_and_bridged_routes(gw, front):
    key, _ = gw.create_key()
    stream = [request_bytes(key, CHAT),
              b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\n\r\n",
              request_bytes(key, {**CHAT, "max_tokens": 2}),
              f"GET /vkeys/openai/v1/models HTTP/1.1\r\nhost: t\r\n"
              f"authorization: Bearer {key}\r\n\r\n".encode(),
              request_bytes("vk-wrong", CHAT),  # refused, in its turn
              SENTINEL]
    talk = converse(gw, b"".join(stream))
    assert talk.statuses == [200, 200, 200, 200, 401, 404]
    assert json.loads(talk.replies[0].body)["usage"]["completion_tokens"] == 5
    assert json.loads(talk.replies[1].body)["status"] == "ok"
    assert json.loads(talk.replies[2].body)["usage"]["completion_tokens"] == 2
    assert json.loads(talk.replies[3].body)["object"] == "list"
    assert talk.closed


HEALTH = b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\n\r\n"


@pytest.mark.parametrize("refused", ["400", "413", "431"])
def test_pipelining_after_a_refusal(gw, front, refused):
    """Requests before a refusal are answered in order; the refusal closes the connection
    (the lean front), so nothing after it is read as a request."""
    bad = {"400": b"NOT HTTP AT ALL\r\n\r\n",
           "413": f"POST {PATH} HTTP/1.1\r\nhost: t\r\ncontent-length: 50000\r\n\r\n".encode()
           + b"x" * 50000,
           "431": b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\n" +
           b"".join(b"x-filler-%d: %s\r\n" % (i, b"y" * 1024) for i in range(70)) + b"\r\n"}
    talk = converse(gw, HEALTH + bad[refused] + HEALTH, wait=1.5)
    assert talk.statuses[0] == 200
    assert talk.closed or (front, refused) == ("tornado", "413")
    if front == "lean":
        assert talk.statuses == [200, int(refused)]
        json_refusal(talk.replies[1], int(refused))
    elif refused == "400":
        assert talk.statuses == [200, 400] and bare_400(talk.replies[1])
    elif refused == "413":  # tornado reads the body; the call path refuses it, and goes on
        assert talk.statuses == [200, 413, 200]
        assert "limit of 4096 bytes" in json_refusal(talk.replies[1], 413)
    else:  # tornado closes an oversized head without an answer
        assert talk.statuses == [200]


# -- 100-continue, HEAD, 204/304, HTTP/1.0, Host --------------------------------------------
def test_expect_100_continue(gw, front):
    key, _ = gw.create_key()
    data = json.dumps(CHAT).encode()
    head = (f"POST {PATH} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\n"
            f"expect: 100-continue\r\ncontent-length: {len(data)}\r\n"
            f"connection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")  # (tornado: "(Continue)")
        sock.sendall(data)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert [r.status for r in parse_replies(data)] == [200]


def test_head_answers_have_no_body_and_keep_framing(gw, front):
    key, _ = gw.create_key()
    talk = converse(gw, f"HEAD /vkeys/openai/v1/models HTTP/1.1\r\nhost: t\r\n"
                        f"authorization: Bearer {key}\r\n\r\n".encode() + SENTINEL,
                    head_requests={0})
    assert talk.statuses == [405, 404]
    assert talk.replies[0].headers["allow"] == "GET"
    assert talk.raw.count(b"HTTP/1.1 ") == 2  # the HEAD answer carried no body


# (an upstream's 204 to a call is answered 502 by the call path, which expects JSON; a 304
# is relayed as the upstream's own error status)
@pytest.mark.parametrize("status", [304])
def test_bodyless_upstream_answers(make_gateway, monkeypatch, front, status):
    upstream = _RawUpstream(f"HTTP/1.1 {status} X\r\netag: \"e\"\r\n\r\n".encode())
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test")
    try:
        gw = make_gateway(front=front, providers={"openai": {
            "kind": "openai", "base_url": f"http://127.0.0.1:{upstream.port}/v1",
            "api_key_env": "TEST_OPENAI_KEY"}})
        key, _ = gw.create_key()
        talk = converse(gw, request_bytes(key, CHAT) * 2 + SENTINEL)
    finally:
        upstream.close()
    assert talk.statuses == [status, status, 404]
    for reply in talk.replies[:2]:
        assert "content-length" not in reply.headers
        assert "transfer-encoding" not in reply.headers


@pytest.mark.parametrize("route", ["bridged", "lean"])
def test_http10_with_and_without_keepalive(gw, front, route):
    key, _ = gw.create_key()
    if route == "bridged":
        def ask(extra: str) -> bytes:
            return f"GET /vkeys/api/health HTTP/1.0\r\n{extra}\r\n".encode()
    else:
        def ask(extra: str) -> bytes:
            return request_bytes(key, CHAT, version="1.0", extra=extra)
    plain = converse(gw, ask("") + ask(""))
    assert plain.statuses == [200] and plain.closed  # 1.0: one request per connection
    kept = converse(gw, ask("connection: keep-alive\r\n") + ask(""))
    assert kept.statuses == [200, 200] and kept.closed
    assert kept.replies[0].headers["connection"].lower() == "keep-alive"
    assert "content-length" in kept.replies[0].headers


@pytest.mark.parametrize("host", ["", "host: a b\r\n", "host: a\r\nhost: b\r\n",
                                  "host: a,b\r\n"])
def test_bad_host(gw, front, host):
    talk = converse(gw, f"GET /vkeys/api/health HTTP/1.1\r\n{host}\r\n".encode() + HEALTH
                    + SENTINEL)
    if front == "lean":  # 400 in the dialect, and the connection goes on
        assert talk.statuses == [400, 200, 404]
        assert "Host header" in json_refusal(talk.replies[0], 400)
    else:  # tornado: bare 400 and close
        assert talk.statuses == [400] and bare_400(talk.replies[0])
    assert talk.closed


# -- properties -------------------------------------------------------------------------------
def _stream(key: str) -> tuple[bytes, int]:
    """A pipelined stream over lean and bridged routes with deterministic answers."""
    count = json.dumps({"model": "claude-haiku-4-5",
                        "messages": [{"role": "user", "content": "hello there"}]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (count[:7], count[7:]))
    parts = [
        HEALTH,
        f"POST {COUNT} HTTP/1.1\r\nhost: t\r\nx-api-key: {key}\r\n"
        f"content-length: {len(count)}\r\n\r\n".encode() + count,
        f"GET /vkeys/openai/v1/models HTTP/1.1\r\nhost: t\r\n"
        f"authorization: Bearer {key}\r\n\r\n".encode(),
        f"POST {COUNT} HTTP/1.1\r\nhost: t\r\nx-api-key: {key}\r\n"
        f"transfer-encoding: chunked\r\n\r\n".encode() + chunked + b"0\r\n\r\n",
        b"GET /vkeys/nowhere?x=1 HTTP/1.1\r\nhost: t\r\n\r\n",
        SENTINEL]
    return b"".join(parts), len(parts)


def _answers(talk: Conversation) -> list[tuple[int, bytes]]:
    return [(r.status, r.body) for r in talk.replies]


@pytest.fixture
def split_gateway(make_gateway, front):
    gw = make_gateway(fake_mode="always", front=front)
    key, _ = gw.create_key()
    stream, count = _stream(key)
    reference = converse(gw, stream)
    assert len(reference.replies) == count and reference.closed
    return gw, stream, _answers(reference)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_split_of_a_pipelined_stream_gives_the_same_answers(split_gateway, data):
    gw, stream, reference = split_gateway
    cuts = sorted(data.draw(st.sets(st.integers(1, len(stream) - 1), max_size=8)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]
    talk = converse(gw, pieces, pause=0.003)
    assert _answers(talk) == reference
    assert talk.closed


_METHODS = st.sampled_from([b"", b"GET ", b"POST ", b"HEAD ", b"PUT ", b"CONNECT ",
                            b"GET /vkeys/api/health HTTP/1.1\r\n",
                            f"POST {PATH} HTTP/1.1\r\nhost: t\r\n".encode()])


@pytest.fixture
def garbage_gateway(make_gateway, front):
    return make_gateway(fake_mode="always", max_body_bytes=4096, head_timeout=0.5,
                        body_timeout=0.5, idle_timeout=0.5, front=front)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=_METHODS, garbage=st.binary(max_size=300),
       tail=st.sampled_from([b"", b"\r\n\r\n", b"\r\n"]))
def test_random_bytes_never_hang_or_crash_the_server(garbage_gateway, front, caplog, prefix,
                                                     garbage, tail):
    """Whatever arrives, the server answers 4xx (or 2xx, if it happens to be a request)
    or closes, within its deadlines; never a 5xx, never an error in its log; and it
    goes on serving."""
    gw = garbage_gateway
    with caplog.at_level(logging.ERROR):
        if front == "lean":
            talk = converse(gw, prefix + garbage + tail, wait=3.0)
            assert talk.closed  # the head deadline (0.5 s), if nothing else, ended it
        else:  # no deadline on tornado's server here: the client ends what it began
            with socket.create_connection(("127.0.0.1", gw.port), timeout=3) as sock:
                sock.sendall(prefix + garbage + tail)
                sock.shutdown(socket.SHUT_WR)
                data = b""
                try:
                    while chunk := sock.recv(65536):
                        data += chunk
                except ConnectionResetError:
                    pass
            talk = Conversation(parse_replies(data), True, data)
        assert all(status < 500 for status in talk.statuses), talk.raw[:300]
        health = converse(gw, HEALTH.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
        assert health.statuses == [200]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def test_health_answers_other_methods_in_json(gateway):
    """``POST /api/health``: 405 in the API's JSON error shape on both fronts' routes."""
    import json as jsonlib
    import urllib.error
    import urllib.request

    request = urllib.request.Request(gateway.url + "/api/health", data=b"{}", method="POST")
    try:
        urllib.request.urlopen(request, timeout=10)
        raise AssertionError("POST /api/health was answered 2xx")
    except urllib.error.HTTPError as exc:
        status, body, kind = exc.code, exc.read(), exc.headers.get("content-type", "")
    assert status == 405 and kind.startswith("application/json"), (status, kind)
    assert "GET only" in jsonlib.loads(body)["error"]["message"]
