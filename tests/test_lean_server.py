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
        sock.sendall(f"GET /nowhere HTTP/1.1\r\nhost: t\r\n\r\n".encode())
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
