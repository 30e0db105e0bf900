"""The standalone server's lean HTTP/1.1 front, spoken to over raw sockets.

The SDK suites already run through this front; these tests cover what SDKs
never send: pipelined requests, early 413s, ``Expect: 100-continue``, chunked
request bodies, malformed requests, HTTP/1.0 streaming, clients that vanish
mid-stream, and the routes bridged to tornado (admin API, 404, 405).
"""

from __future__ import annotations

import json
import socket
import time

import pytest

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 5}
PATH = "/vkeys/openai/v1/chat/completions"


def request_bytes(key: str, body: dict | bytes, path: str = PATH, *, version: str = "1.1",
                  extra: str = "", method: str = "POST") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"{method} {path} HTTP/{version}\r\nhost: test\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(data)}\r\n{extra}\r\n"
            ).encode() + data


def read_response(sock: socket.socket, buffer: bytearray) -> tuple[int, dict, bytes]:
    """One response from ``sock`` (content-length, chunked or close-delimited)."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed before a response head")
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    del buffer[:len(head) + 4]
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if status == 100:
        return status, headers, b""
    if "content-length" in headers:
        size = int(headers["content-length"])
        while len(buffer) < size:
            buffer += sock.recv(65536)
        body = bytes(buffer[:size])
        del buffer[:size]
        return status, headers, body
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            while b"\r\n" not in buffer:
                buffer += sock.recv(65536)
            size_line, _, _ = bytes(buffer).partition(b"\r\n")
            size = int(size_line, 16)
            while len(buffer) < len(size_line) + 2 + size + 2:
                buffer += sock.recv(65536)
            body += bytes(buffer[len(size_line) + 2:len(size_line) + 2 + size])
            del buffer[:len(size_line) + 2 + size + 2]
            if size == 0:
                return status, headers, body
    body = bytes(buffer)
    buffer.clear()
    while data := sock.recv(65536):
        body += data
    return status, headers, body


def connect(gw) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    return sock


def is_closed(sock: socket.socket) -> bool:
    sock.settimeout(5)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.fixture
def gw(make_gateway):
    return make_gateway(fake_mode="always", max_body_bytes=4096, front="lean")


def test_pipelined_requests_answered_in_order_on_one_connection(gw):
    key, _ = gw.create_key(owner="pipe")
    bodies = [{**CHAT, "max_tokens": n} for n in (1, 2, 3)]
    with connect(gw) as sock:
        sock.sendall(b"".join(request_bytes(key, body) for body in bodies))
        buffer = bytearray()
        replies = [read_response(sock, buffer) for _ in bodies]
    assert [r[0] for r in replies] == [200, 200, 200]
    assert [json.loads(r[2])["usage"]["completion_tokens"] for r in replies] == [1, 2, 3]
    assert len({r[1]["x-request-id"] for r in replies}) == 3
    assert len([e for e in gw.events if e["status"] == "ok"]) == 3


def test_oversized_declared_body_refused_before_it_is_sent(gw):
    key, _ = gw.create_key()
    with connect(gw) as sock:  # the head only: the gateway must answer without the body
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\n"
                     f"content-length: 50000\r\n\r\n".encode())
        status, headers, body = read_response(sock, bytearray())
        assert status == 413
        assert headers["connection"] == "close"
        assert json.loads(body)["error"]["message"] == (
            "request body of 50000 bytes exceeds the gateway's limit of 4096 bytes")
        assert is_closed(sock)
    with connect(gw) as sock:  # Anthropic routes refuse in Anthropic's format
        sock.sendall(f"POST /vkeys/anthropic/v1/messages HTTP/1.1\r\nhost: t\r\n"
                     f"x-api-key: {key}\r\ncontent-length: 99999\r\n\r\n".encode())
        status, _, body = read_response(sock, bytearray())
        assert status == 413
        assert json.loads(body)["error"]["type"] == "request_too_large"


def test_chunked_request_body_and_its_limit(gw):
    key, _ = gw.create_key()
    data = json.dumps(CHAT).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (data[:10], data[10:]))
    head = (f"POST {PATH} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\n"
            "transfer-encoding: chunked\r\n\r\n").encode()
    with connect(gw) as sock:
        sock.sendall(head + chunked + b"0\r\n\r\n")
        status, _, body = read_response(sock, bytearray())
        assert status == 200, body
    with connect(gw) as sock:
        big = b"x" * 3000
        sock.sendall(head + b"%x\r\n%s\r\n" % (len(big), big) * 2 + b"0\r\n\r\n")
        status, _, body = read_response(sock, bytearray())
        assert status == 413
        assert "exceeds the gateway's limit of 4096 bytes" in body.decode()


def test_expect_100_continue(gw):
    key, _ = gw.create_key()
    data = json.dumps(CHAT).encode()
    with connect(gw) as sock:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: t\r\nauthorization: Bearer {key}\r\n"
                     f"expect: 100-continue\r\ncontent-length: {len(data)}\r\n\r\n".encode())
        buffer = bytearray()
        assert read_response(sock, buffer)[0] == 100
        sock.sendall(data)
        assert read_response(sock, buffer)[0] == 200


def test_malformed_request_gets_400_and_the_connection_closes(gw):
    with connect(gw) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: abc\r\n\r\n")
        status, _, body = read_response(sock, bytearray())
        assert status == 400
        assert "malformed HTTP request" in json.loads(body)["error"]["message"]
        assert is_closed(sock)


def test_oversized_headers_get_431_and_are_not_kept(gw):
    with connect(gw) as sock:
        filler = "".join(f"x-filler-{i}: {'y' * 1024}\r\n" for i in range(70))
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: t\r\n{filler}".encode())  # no end
        status, _, body = read_response(sock, bytearray())
        assert status == 431
        assert "limit of 65536 bytes" in json.loads(body)["error"]["message"]
        assert is_closed(sock)


def test_http10_stream_is_close_delimited(gw):
    key, _ = gw.create_key()
    with connect(gw) as sock:
        sock.sendall(request_bytes(key, {**CHAT, "stream": True}, version="1.0"))
        status, headers, body = read_response(sock, bytearray())
    assert status == 200
    assert "transfer-encoding" not in headers
    assert body.rstrip().endswith(b"data: [DONE]")
    # the role chunk, five content chunks, the finish chunk and [DONE]; no usage chunk,
    # since the client did not ask for one
    assert body.count(b"data: ") == 1 + 5 + 1 + 1


def test_client_leaving_mid_stream_is_recorded_and_its_hold_released(gw):
    key, record = gw.create_key(budgets=[{"usd": 10, "period": "day"}])
    with connect(gw) as sock:
        sock.sendall(request_bytes(key, {**CHAT, "stream": True, "max_tokens": 50},
                                   extra="x-vkeys-fake-chunk-delay-ms: 50\r\n"))
        buffer = bytearray()
        while buffer.count(b"data: ") < 3:  # the role chunk and two content chunks
            buffer += sock.recv(65536)
    deadline = time.time() + 10
    while time.time() < deadline and not gw.events:
        time.sleep(0.05)
    [event] = gw.events
    assert (event["status"], event["http_status"], event["error_type"]) == (
        "cancelled", 499, "client_disconnected")
    assert event["usage_estimated"] and event["output_tokens"] >= 1
    held = gw.call_in_loop(lambda: gw.gateway.scope_report(f"key:{record['id']}"))
    assert all(b["held_usd"] == 0 for b in held["budgets"])


def test_bridged_routes_admin_404_and_405(gw):
    key, record = gw.create_key(owner="bridge")  # the admin API answers through the bridge
    status, body = gw.admin("GET", f"/keys/{record['id']}")
    assert status == 200 and body["owner"] == "bridge"
    with connect(gw) as sock:
        buffer = bytearray()
        sock.sendall("GET /nowhere HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        assert read_response(sock, buffer)[0] == 404
        sock.sendall(f"GET {PATH} HTTP/1.1\r\nhost: t\r\n\r\n".encode())
        status, _, body = read_response(sock, buffer)
        assert status == 405
        assert json.loads(body)["error"]["type"] == "invalid_request_error"
        sock.sendall(f"GET /vkeys/openai/v1/models HTTP/1.1\r\nhost: t\r\n"
                     f"authorization: Bearer {key}\r\n\r\n".encode())
        status, _, body = read_response(sock, buffer)
        assert status == 200 and json.loads(body)["data"]
        sock.sendall(request_bytes(key, CHAT))  # and the data plane still on the same socket
        assert read_response(sock, buffer)[0] == 200


def test_idle_and_half_sent_connections_are_closed(gw):
    key, _ = gw.create_key()
    with connect(gw) as idle, connect(gw) as half:
        idle.sendall(request_bytes(key, CHAT))
        assert read_response(idle, bytearray())[0] == 200
        half.sendall(f"POST {PATH} HTTP/1.1\r\nhost: t\r\nauthor".encode())  # never ends
        gw.server.idle_timeout = gw.server.head_timeout = 0.2
        time.sleep(0.4)
        gw.call_in_loop(gw.server.sweep_idle)
        assert is_closed(idle)
        status, _, body = read_response(half, bytearray())
        assert status == 408
        assert json.loads(body)["error"]["message"] == (
            "request line and headers not received within the gateway's limit of 0.2 s")
        assert is_closed(half)
    gw.server.idle_timeout, gw.server.head_timeout = 75.0, 30.0
    gw.call_in_loop(gw.server.sweep_idle)  # back to a slow sweep
    with connect(gw) as fresh:  # the server itself still serves
        fresh.sendall(request_bytes(key, CHAT))
        assert read_response(fresh, bytearray())[0] == 200


def test_serve_on_a_taken_port_says_so(tmp_path):
    import os
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "jupyter_vkeys.cli", "serve", "--fake", "--port", str(port),
             "--log-level", "ERROR"], capture_output=True, text=True, timeout=60,
            env={**os.environ, "VKEYS_DATA_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


# -- issue 11, items 12-16 ---------------------------------------------------------------
def _until_answered(sock: socket.socket, pieces, pause: float = 0.0) -> tuple[int, bytes]:
    """Send ``pieces`` one by one until the server answers; (bytes sent, answer)."""
    import select

    sent = 0
    for piece in pieces:
        if select.select([sock], [], [], pause)[0]:
            break
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    sock.settimeout(5)
    return sent, sock.recv(65536)


def test_one_huge_header_sent_in_pieces_gets_431_at_the_limit(gw):
    """12: httptools reports a header only once it is complete, so the bytes of a head
    still being read are counted per read: 431 once they pass max_head_bytes."""
    with connect(gw) as sock:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: t\r\nx-huge: ".encode())
        time.sleep(0.05)
        sent, answer = _until_answered(sock, (b"y" * 4096 for _ in range(512)), 0.002)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert b"limit of 65536 bytes" in answer
        # refused at the limit, not after 2 MB (what the client could send beyond it sat
        # in the kernel's socket buffers: the server parses no byte past the limit)
        assert sent < 1 << 20
        assert is_closed(sock)


def test_huge_url_sent_in_pieces_gets_414(make_gateway):
    gw = make_gateway(fake_mode="always", max_url_bytes=1000)
    with connect(gw) as sock:
        sock.sendall(b"GET /vkeys/anthropic/v1/")
        sent, answer = _until_answered(sock, (b"a" * 100 for _ in range(100)), 0.002)
        assert answer.startswith(b"HTTP/1.1 414 ")
        body = answer.partition(b"\r\n\r\n")[2]
        assert json.loads(body)["error"]["message"] == (
            "request target exceeds the gateway's limit of 1000 bytes")
        assert json.loads(body)["type"] == "error"  # the Anthropic route's dialect
        assert sent <= 1100


@pytest.fixture
def quick(make_gateway):
    """A gateway whose deadlines are short enough to watch."""
    return make_gateway(fake_mode="always", head_timeout=0.6, body_timeout=0.6,
                        idle_timeout=0.6, front="lean")


def test_trickled_head_is_cut_at_its_deadline(quick):
    """13: every byte used to reset the idle timer; the head deadline counts from the
    head's first byte, so a trickle gets 408 (in the route's dialect) after 0.6 s."""
    head = f"POST /vkeys/anthropic/v1/messages HTTP/1.1\r\nhost: t\r\nx-slow: {'z' * 100}"
    started = time.monotonic()
    with connect(quick) as sock:
        sent, answer = _until_answered(sock, (c.encode() for c in head), 0.02)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        body = json.loads(answer.partition(b"\r\n\r\n")[2])
        assert body["error"]["type"] == "timeout_error"
        assert "within the gateway's limit of 0.6 s" in body["error"]["message"]
        assert 0.6 <= took < 2.0 and sent < len(head)
        assert is_closed(sock)


def test_trickled_body_is_cut_at_its_deadline(quick):
    key, _ = quick.create_key()
    data = json.dumps(CHAT).encode()
    with connect(quick) as sock:
        sock.sendall(request_bytes(key, data)[:-len(data)])
        sent, answer = _until_answered(sock, (data[i:i + 1] for i in range(len(data))), 0.02)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"request body not received within the gateway's limit of 0.6 s" in answer
        assert sent < len(data)


def test_idle_keepalive_closed_but_never_a_long_response(quick):
    key, _ = quick.create_key()
    with connect(quick) as sock:  # a stream longer than the idle timeout runs to its end
        sock.sendall(request_bytes(key, {**CHAT, "stream": True, "max_tokens": 12},
                                   extra="x-vkeys-fake-chunk-delay-ms: 100\r\n"))
        status, _, body = read_response(sock, bytearray())
        assert status == 200 and body.rstrip().endswith(b"data: [DONE]")
        started = time.monotonic()
        assert is_closed(sock)  # then the idle connection is closed
        assert time.monotonic() - started < 2.0


def test_connection_cap_refuses_cleanly_with_503(make_gateway):
    gw = make_gateway(fake_mode="always", max_connections=3)
    held = [connect(gw) for _ in range(3)]
    try:
        time.sleep(0.1)
        with connect(gw) as extra:
            status, headers, body = read_response(extra, bytearray())
            assert status == 503 and headers["retry-after"] == "1"
            error = json.loads(body)
            # read by both SDKs: Anthropic's shape, OpenAI's code beside it
            assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
            assert error["error"]["code"] == "too_many_connections"
            assert "limit of 3 open connections" in error["error"]["message"]
            assert is_closed(extra)
    finally:
        held.pop().close()
    time.sleep(0.1)
    with connect(gw) as sock:  # room again
        sock.sendall(b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200
    for sock in held:
        sock.close()


@pytest.mark.parametrize("head", [
    "GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\n",
    "CONNECT 127.0.0.1:443 HTTP/1.1\r\nhost: 127.0.0.1:443\r\n"])
def test_upgrade_and_connect_get_400_and_close(gw, head):
    """14: the bytes after an Upgrade or CONNECT head are not HTTP; they were lost or read
    as a request, depending on packet boundaries."""
    smuggled = b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\n\r\n"
    for split in (False, True):
        with connect(gw) as sock:
            if split:
                sock.sendall(head.encode() + b"\r\n")
                time.sleep(0.05)
                sock.sendall(smuggled)
            else:
                sock.sendall(head.encode() + b"\r\n" + smuggled)
            status, _, body = read_response(sock, bytearray())
            assert status == 400
            assert "protocol upgrades (Upgrade, CONNECT) are not served" in body.decode()
            assert is_closed(sock)  # nothing after it is answered


@pytest.mark.parametrize("host, message", [
    ("", "missing Host header (HTTP/1.1 requires one)"),
    ("host: a b\r\n", "invalid Host header 'a b'"),
    ("host: a\r\nhost: b\r\n", "more than one Host header"),
])
def test_missing_or_bad_host_gets_400_and_the_connection_goes_on(gw, host, message):
    """15: the bridge did not catch tornado's HTTPInputError and the connection hung."""
    key, _ = gw.create_key()
    data = json.dumps(CHAT).encode()
    with connect(gw) as sock:
        buffer = bytearray()
        for path in ("/vkeys/api/health", PATH):  # bridged, then the lean data plane
            sock.sendall(f"POST {path} HTTP/1.1\r\n{host}authorization: Bearer {key}\r\n"
                         f"content-length: {len(data)}\r\n\r\n".encode() + data)
            status, _, body = read_response(sock, buffer)
            assert status == 400
            assert json.loads(body)["error"]["message"] == message
        sock.sendall(request_bytes(key, CHAT))  # and the same connection goes on
        assert read_response(sock, buffer)[0] == 200
    assert [e for e in gw.events if e["status"] == "ok"]  # only the good call went through


def test_http10_without_host_is_fine(gw):
    with connect(gw) as sock:
        sock.sendall(b"GET /vkeys/api/health HTTP/1.0\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200


def test_trailers_are_not_taken_for_headers(gw):
    key, _ = gw.create_key()
    data = json.dumps(CHAT).encode()
    with connect(gw) as sock:
        sock.sendall(f"POST {PATH} HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                     f"{len(data):x}\r\n".encode() + data +
                     f"\r\n0\r\nauthorization: Bearer {key}\r\n\r\n".encode())
        status, _, body = read_response(sock, bytearray())
    assert status == 401, body


class _RawUpstream:
    """An upstream of the test's own on a raw socket: answers every request with
    ``response`` (bytes) and keeps the connection open."""

    def __init__(self, response: bytes) -> None:
        import threading

        self.response = response
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
                head, sep, rest = buffer.partition(b"\r\n\r\n")
                if not sep:
                    continue
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                if len(rest) < length:
                    continue
                buffer = rest[length:]
                conn.sendall(self.response)

    def close(self) -> None:
        self.sock.close()


# (an upstream's 204 to a call is answered 502 by the call path, which expects JSON; a 304
# is relayed as the upstream's own error status)
@pytest.mark.parametrize("status", [304])
def test_bodyless_statuses_carry_no_content_length(make_gateway, monkeypatch, status):
    """16: an upstream's 304 went out with content-length: 0, which no 304 may have."""
    upstream = _RawUpstream(f"HTTP/1.1 {status} X\r\n\r\n".encode())
    monkeypatch.setenv("TEST_OPENAI_KEY", "sk-test")
    try:
        gw = make_gateway(providers={"openai": {
            "kind": "openai", "base_url": f"http://127.0.0.1:{upstream.port}/v1",
            "api_key_env": "TEST_OPENAI_KEY"}}, max_body_bytes=4096)
        key, _ = gw.create_key()
        with connect(gw) as sock:
            buffer = bytearray()
            for _ in range(2):  # and the connection stays in step
                sock.sendall(request_bytes(key, CHAT))
                while b"\r\n\r\n" not in buffer:
                    buffer += sock.recv(65536)
                head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
                buffer[:] = rest
                assert head.startswith(f"HTTP/1.1 {status} ".encode())
                assert b"content-length" not in head.lower()
                assert b"transfer-encoding" not in head.lower()
            sock.sendall(b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\n\r\n")
            assert read_response(sock, buffer)[0] == 200
    finally:
        upstream.close()


def test_header_values_with_cr_or_lf_are_never_written():
    from jupyter_vkeys.http.server import head as _head

    head = _head(200, [("x-ok", "1"), ("x-bad", "a\r\nset-cookie: evil=1"),
                       ("x-lf", "b\nx: y"), ("bad\r\nname", "v"), ("x-nul", "a\0b"),
                       ("x-uni", "\u2603")], b"content-length: 0\r\n\r\n")
    assert head.count(b"\r\n") == 5  # status, x-ok, date, content-length, blank line
    assert b"evil" not in head and b"x: y" not in head and b"\0" not in head
    assert b"x-ok: 1\r\n" in head


@pytest.mark.parametrize("front", ["lean", "tornado"])
def test_unknown_and_unsupported_paths_answer_json_in_the_dialect(make_gateway, front):
    """16: HTML 404/405 pages for moderations, files, batches, models/{id}... Both fronts
    answer JSON in the route's dialect, and models.retrieve works with both SDKs."""
    from support import anthropic_client, openai_client

    gw = make_gateway(fake_mode="always", front=front)
    key, _ = gw.create_key(models=["gpt-4o-mini", "claude-*"])
    with connect(gw) as sock:
        buffer = bytearray()
        for method, path, dialect, status, text in [
                ("POST", "/vkeys/openai/v1/moderations", "openai", 404,
                 "does not serve /v1/moderations"),
                ("GET", "/vkeys/openai/v1/files?purpose=x", "openai", 404,
                 "does not serve /v1/files"),
                ("POST", "/vkeys/openai/v1/batches", "openai", 404, "does not serve"),
                ("POST", "/vkeys/anthropic/v1/messages/batches", "anthropic", 404,
                 "does not serve /v1/messages/batches"),
                ("GET", "/vkeys/anthropic/v1/nowhere", "anthropic", 404, "no such route"),
                ("GET", "/vkeys/nowhere", "openai", 404, "no such route"),
                ("GET", "/vkeys/anthropic/v1/messages", "anthropic", 405,
                 "method GET is not allowed on /vkeys/anthropic/v1/messages (allowed: POST)"),
                ("DELETE", "/vkeys/openai/v1/models", "openai", 405, "(allowed: GET)")]:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: 0\r\n"
                         f"authorization: Bearer {key}\r\n\r\n".encode())
            got, headers, body = read_response(sock, buffer)
            assert (got, headers["content-type"]) == (status, "application/json"), path
            error = json.loads(body)
            assert text in error["error"]["message"]
            assert (error.get("type") == "error") == (dialect == "anthropic"), path
    model = openai_client(gw, key).models.retrieve("gpt-4o-mini")
    assert (model.id, model.object) == ("gpt-4o-mini", "model")
    import anthropic
    import openai
    with pytest.raises(openai.NotFoundError, match="not in this gateway's catalog"):
        openai_client(gw, key).models.retrieve("gpt-4o")  # not allowed for this key
    claude = anthropic_client(gw, key).models.retrieve("claude-haiku-4-5")
    assert claude.id == "claude-haiku-4-5"
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(gw, key).models.retrieve("no-such-model")


def test_access_log_has_no_query_strings(gw, caplog):
    import logging

    access = logging.getLogger("jupyter_vkeys.access")  # (the gateway's access log:
    with caplog.at_level(logging.INFO, logger=access.name):  # one line per request)
        with connect(gw) as sock:
            sock.sendall(b"GET /vkeys/api/health?token=SECRET-IN-QUERY HTTP/1.1\r\nhost: t\r\n"
                         b"\r\nGET /vkeys/openai/v1/models?x=SECRET2 HTTP/1.1\r\nhost: t\r\n\r\n")
            buffer = bytearray()
            read_response(sock, buffer)
            read_response(sock, buffer)
        time.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if r.name == access.name]
    assert any("/vkeys/api/health" in line for line in lines)
    assert any("/vkeys/openai/v1/models" in line for line in lines)
    assert not [line for line in lines if "SECRET" in line or "?" in line]


def test_half_closed_client_still_gets_its_answers(gw):
    """A client that sends its requests then FIN (``shutdown(SHUT_WR)``) is answered, then
    the connection closes (it used to be closed at once, the answers lost)."""
    key, _ = gw.create_key()
    with connect(gw) as sock:
        sock.sendall(request_bytes(key, CHAT) + b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        buffer = bytearray()
        assert read_response(sock, buffer)[0] == 200
        assert read_response(sock, buffer)[0] == 200
        assert is_closed(sock)


def test_head_begun_behind_a_pipelined_request_is_still_bounded(gw):
    """The head of a second request that begins in the same read as the end of the first
    is counted from what the parser reports, then by whole reads: still refused near
    the limit."""
    with connect(gw) as sock:
        sock.sendall(b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\n\r\n"
                     b"GET /vkeys/api/health HTTP/1.1\r\nhost: t\r\nx-huge: " + b"y" * 3000)
        assert read_response(sock, bytearray())[0] == 200
        sent, answer = _until_answered(sock, (b"y" * 4096 for _ in range(512)), 0.002)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert sent < 1 << 20
