"""Both upstream HTTP clients (the lean one and aiohttp's) against raw-socket upstreams
that misbehave on purpose (tests/misbehaving.py): framing, connection reuse, stray
bytes, requests reaching the upstream exactly once, cancellation, TLS, CONNECT proxies,
content codings and redirects. Every case runs for both clients: the lean client stays
the default only while it passes what aiohttp passes."""

from __future__ import annotations

import asyncio
import gzip
import os
import ssl

import pytest
import trustme

from jupyter_vkeys.http.client import LeanTransport
from jupyter_vkeys.http.aiohttp_client import HttpTransport
from jupyter_vkeys.http.upstream import ProxySettings, UpstreamError, UpstreamRequest
from misbehaving import ConnectProxy, Misbehaving, chunked, gzipped, response

CLIENTS = ["lean", "aiohttp"]
OK = response(body=b"{}")
EVIL = response(body=b'{"evil": "another caller"}')


def make_client(kind: str, **kwargs):
    return (LeanTransport if kind == "lean" else HttpTransport)(**kwargs)


def post(url: str, body: bytes = b'{"a": 1}') -> UpstreamRequest:
    return UpstreamRequest("POST", url + "/v1/chat/completions",
                           {"content-type": "application/json",
                            "authorization": "Bearer sk-test"}, body)


async def call(client, url: str, body: bytes = b'{"a": 1}') -> tuple[int, bytes]:
    resp = await client.send(post(url, body))
    try:
        data = b"".join([c async for c in resp.chunks()])
    finally:
        resp.close()
    return resp.status, data


def run(coro_fn):
    return asyncio.run(coro_fn())


@pytest.fixture
def upstreams():
    started: list = []

    def factory(script, **kwargs) -> Misbehaving:
        server = Misbehaving(script, **kwargs)
        started.append(server)
        return server
    yield factory
    for server in started:
        server.stop()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- framing --------------------------------------------------------------------------

def test_connections_are_reused_past_descriptor_1024(upstreams):
    """A busy gateway holds more than 1024 descriptors. select() refuses those (FD_SETSIZE):
    the lean client's idle check once used it, so past 1024 every pooled connection looked
    unusable and each call opened a new one (found when the whole suite ran in one
    process). It polls instead."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max(soft, hard) < 1300:
        pytest.skip("needs at least 1300 open files (ulimit -n)")
    if soft < 1300:
        resource.setrlimit(resource.RLIMIT_NOFILE, (1300, hard))
    up = upstreams(lambda n, h, b: [OK])
    fillers = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        async def go():
            client = make_client("lean")
            results = [await call(client, up.url) for _ in range(4)]
            await client.close()
            return results
        assert run(go) == [(200, b"{}")] * 4
    finally:
        for fd in fillers:
            os.close(fd)
    assert up.connections == 1 and up.requests == 4


@pytest.mark.parametrize("kind", CLIENTS)
def test_content_length_and_chunked_with_trailers_share_one_connection(kind, upstreams):
    up = upstreams(lambda n, h, b: [OK if n % 2 else chunked(
        [b"data: 1\n\n", b"data: 2\n\n"], trailers="x-checksum: abc\r\n")])

    async def go():
        client = make_client(kind)
        results = [await call(client, up.url) for _ in range(4)]
        await client.close()
        return results
    assert run(go) == [(200, b"{}"), (200, b"data: 1\n\ndata: 2\n\n")] * 2
    assert up.connections == 1 and up.requests == 4


@pytest.mark.parametrize("kind", CLIENTS)
def test_close_delimited_body(kind, upstreams):
    up = upstreams(lambda n, h, b: [b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n",
                                    b'{"id": ', 0.05, b'"x"}', "close"])

    async def go():
        client = make_client(kind)
        results = [await call(client, up.url) for _ in range(2)]
        await client.close()
        return results
    assert run(go) == [(200, b'{"id": "x"}')] * 2
    assert up.connections == 2 and up.requests == 2


@pytest.mark.parametrize("kind", CLIENTS)
def test_interim_responses_do_not_complete_the_exchange(kind, upstreams):
    up = upstreams(lambda n, h, b: [b"HTTP/1.1 100 Continue\r\n\r\n",
                                    b"HTTP/1.1 103 Early Hints\r\nlink: </x>; rel=preload\r\n\r\n",
                                    0.05, response(201, b'{"final": true}', [("x-final", "1")])])

    async def go():
        client = make_client(kind)
        resp = await client.send(post(up.url))
        body = b"".join([c async for c in resp.chunks()])
        resp.close()
        second = await call(client, up.url)
        await client.close()
        return resp.status, resp.headers.get("x-final"), resp.headers.get("link"), body, second
    status, final, link, body, second = run(go)
    assert (status, final, link, body) == (201, "1", None, b'{"final": true}')
    assert second == (201, b'{"final": true}')


@pytest.mark.parametrize("kind", CLIENTS)
def test_malformed_response_is_an_error(kind, upstreams):
    up = upstreams(lambda n, h, b: [b"HTTP/1.1 2OO OK\r\n\r\n", "close"])

    async def go():
        client = make_client(kind)
        with pytest.raises(UpstreamError) as err:
            await call(client, up.url)
        await client.close()
        return err.value
    assert run(go).sent


# -- bytes that belong to no exchange -------------------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
def test_extra_bytes_in_the_same_write_never_reach_the_next_caller(kind, upstreams):
    up = upstreams(lambda n, h, b: [OK + EVIL] if n == 1 else [response(body=b'{"n": %d}' % n)])

    async def go():
        client = make_client(kind)
        first = await call(client, up.url)
        second = await call(client, up.url)
        await client.close()
        return first, second
    first, second = run(go)
    assert first == (200, b"{}")
    assert second == (200, b'{"n": 2}')
    assert up.connections == 2


@pytest.mark.parametrize("kind", [
    "lean", pytest.param("aiohttp", marks=pytest.mark.xfail(
        strict=True, reason="aiohttp 3.x parses bytes that arrive on an idle pooled connection "
                            "and hands them to the next request as its answer"))])
def test_bytes_arriving_while_idle_discard_the_connection(kind, upstreams):
    up = upstreams(lambda n, h, b: [OK, 0.05, EVIL] if n == 1
                   else [response(body=b'{"n": %d}' % n)])

    async def go():
        client = make_client(kind)
        first = await call(client, up.url)
        await asyncio.sleep(0.2)
        second = await call(client, up.url)
        await client.close()
        return first, second
    assert run(go) == ((200, b"{}"), (200, b'{"n": 2}'))
    assert up.connections == 2


@pytest.mark.parametrize("kind", CLIENTS)
def test_late_bytes_of_a_finished_answer_discard_the_connection(kind, upstreams):
    # The answer is complete, then (while the caller is still reading it) more arrives.
    up = upstreams(lambda n, h, b: [OK, EVIL] if n == 1 else [response(body=b'{"n": %d}' % n)])

    async def go():
        client = make_client(kind)
        resp = await client.send(post(up.url))
        await asyncio.sleep(0.1)
        body = b"".join([c async for c in resp.chunks()])
        resp.close()
        second = await call(client, up.url)
        await client.close()
        return body, second
    assert run(go) == (b"{}", (200, b'{"n": 2}'))


@pytest.mark.parametrize("kind", CLIENTS)
def test_fin_while_idle_uses_a_fresh_connection_once(kind, upstreams):
    up = upstreams(lambda n, h, b: [OK, "close"])

    async def go():
        client = make_client(kind)
        results = []
        for _ in range(3):
            results.append(await call(client, up.url))
            await asyncio.sleep(0.05)
        await client.close()
        return results
    assert run(go) == [(200, b"{}")] * 3
    assert up.requests == 3 and up.connections == 3


@pytest.mark.parametrize("kind", CLIENTS)
def test_fin_while_writing_is_an_error_not_a_retry(kind, upstreams):
    up = upstreams(lambda n, h, b: ["close"], on_head=True)

    async def go():
        client = make_client(kind)
        with pytest.raises(UpstreamError):
            await call(client, up.url, b"x" * (8 << 20))
        await client.close()
    run(go)
    assert up.requests == 1


# -- a request reaches the upstream exactly once --------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
def test_timeout_on_a_reused_connection_reaches_the_upstream_once(kind, upstreams):
    # Three pooled connections, then a call the upstream reads and never answers.
    up = upstreams(lambda n, h, b: [0.1, OK] if n <= 3 else ["hang"])

    async def go():
        client = make_client(kind, read_timeout=0.3)
        await asyncio.gather(*(call(client, up.url) for _ in range(3)))
        with pytest.raises(UpstreamError) as err:
            await call(client, up.url)
        await client.close()
        return err.value
    err = run(go)
    assert err.kind == "timeout" and err.sent
    assert up.connections == 3 and up.requests == 4


@pytest.mark.parametrize("kind", CLIENTS)
def test_close_after_reading_on_a_reused_connection_reaches_the_upstream_once(kind,
                                                                             upstreams):
    up = upstreams(lambda n, h, b: [OK] if n == 1 else ["close"])

    async def go():
        client = make_client(kind)
        assert await call(client, up.url) == (200, b"{}")
        with pytest.raises(UpstreamError) as err:
            await call(client, up.url)
        await client.close()
        return err.value
    assert run(go).sent
    assert up.requests == 2


@pytest.mark.parametrize("kind", CLIENTS)
def test_reset_mid_body_is_an_error(kind, upstreams):
    up = upstreams(lambda n, h, b: [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"par",
                                    0.05, "reset"])

    async def go():
        client = make_client(kind)
        with pytest.raises(UpstreamError):
            await call(client, up.url)
        await client.close()
    run(go)
    assert up.requests == 1


@pytest.mark.parametrize("kind", CLIENTS)
def test_refused_connection(kind):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def go():
        client = make_client(kind, connect_timeout=2)
        with pytest.raises(UpstreamError) as err:
            await call(client, f"http://127.0.0.1:{port}")
        await client.close()
        return err.value
    err = run(go)
    assert err.kind == "unreachable" and not err.sent
    assert str(port) in err.message


# -- cancellation ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("when", ["before_headers", "mid_body"])
def test_cancel_closes_the_upstream_socket_at_once(kind, when, upstreams):
    script = {"before_headers": ["hang"],
              "mid_body": [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\n", "hang"]}[when]
    up = upstreams(lambda n, h, b: [OK] if n == 1 else script)

    async def go():
        client = make_client(kind, read_timeout=30)
        await call(client, up.url)  # a pooled connection exists
        before = open_fds()

        async def one():
            resp = await client.send(post(up.url))
            try:
                async for _ in resp.chunks():
                    pass
            finally:
                resp.close()
        task = asyncio.create_task(one())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        closed = await asyncio.to_thread(up.wait_for, lambda: up.client_closed >= 1, 2.0)
        await asyncio.sleep(0.05)
        after = open_fds()
        await client.close()
        return closed, before, after
    closed, before, after = run(go)
    assert closed, "the upstream connection stayed open after the caller left"
    assert after <= before - 1, (before, after)  # the reused connection's fd is gone
    assert up.requests == 2


# -- content codings and redirects ---------------------------------------------------

@pytest.mark.parametrize("kind", CLIENTS)
def test_gzip_despite_identity_is_decoded(kind, upstreams):
    body = b'{"usage": {"prompt_tokens": 3}, "pad": "' + b"x" * 100000 + b'"}'
    up = upstreams(lambda n, h, b: [gzipped(body)] if n == 1 else [chunked(
        [gzip.compress(b"data: 1\n\n")], headers="content-encoding: gzip\r\n")])

    async def go():
        client = make_client(kind)
        results = [await call(client, up.url) for _ in range(2)]
        await client.close()
        return results
    assert run(go) == [(200, body), (200, b"data: 1\n\n")]


@pytest.mark.parametrize("kind", CLIENTS)
def test_unknown_content_coding_is_refused(kind, upstreams):
    up = upstreams(lambda n, h, b: [b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\n"
                                    b"content-length: 4\r\n\r\n\x0b\x01\x80\x03"])

    async def go():
        client = make_client(kind)
        with pytest.raises(UpstreamError) as err:
            await call(client, up.url)
        await client.close()
        return err.value
    err = run(go)
    assert err.kind == "protocol" and "br" in err.message


@pytest.mark.parametrize("kind", CLIENTS)
def test_redirects_are_never_followed(kind, upstreams):
    target = upstreams(lambda n, h, b: [OK])
    up = upstreams(lambda n, h, b: [response(307, b"", [("location", target.url + "/v1/x")],
                                             reason="Temporary Redirect")])

    async def go():
        client = make_client(kind)
        result = await call(client, up.url)
        await client.close()
        return result
    assert run(go) == (307, b"")
    assert target.requests == 0


# -- TLS ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize("kind", CLIENTS)
def test_tls_with_a_custom_ca(kind, upstreams, ca):
    up = upstreams(lambda n, h, b: [OK], tls=server_context(ca, "127.0.0.1"))

    async def go():
        client = make_client(kind, ssl_context=client_context(ca))
        results = [await call(client, up.url) for _ in range(2)]
        await client.close()
        return results
    assert run(go) == [(200, b"{}")] * 2
    assert up.connections == 1


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("case", ["unknown_ca", "wrong_hostname"])
def test_tls_failures_are_clear(kind, case, upstreams, ca):
    names = ("127.0.0.1",) if case == "unknown_ca" else ("api.example.test",)
    up = upstreams(lambda n, h, b: [OK], tls=server_context(ca, *names))

    async def go():
        context = None if case == "unknown_ca" else client_context(ca)
        client = make_client(kind, ssl_context=context, connect_timeout=5)
        with pytest.raises(UpstreamError) as err:
            await call(client, up.url)
        await client.close()
        return err.value
    err = run(go)
    assert err.kind == "tls" and not err.sent
    assert "certificate" in err.message
    if case == "wrong_hostname":
        assert "mismatch" in err.message.lower() or "hostname" in err.message.lower()
    assert up.requests == 0


# -- CONNECT proxies ------------------------------------------------------------------

@pytest.fixture
def proxy():
    server = ConnectProxy()
    yield server
    server.stop()


@pytest.mark.parametrize("kind", CLIENTS)
def test_https_through_a_connect_proxy(kind, upstreams, proxy, ca):
    up = upstreams(lambda n, h, b: [OK], tls=server_context(ca, "127.0.0.1"))
    settings = ProxySettings({"https": proxy.url, "http": proxy.url}, no_proxy="localhost")

    async def go():
        client = make_client(kind, ssl_context=client_context(ca), proxies=settings)
        results = [await call(client, up.url) for _ in range(2)]
        await client.close()
        return results
    assert run(go) == [(200, b"{}")] * 2
    assert proxy.targets == [f"127.0.0.1:{up.port}"]  # one tunnel, reused
    assert up.connections == 1


def test_plain_http_through_a_connect_proxy_with_credentials(upstreams, proxy):
    up = upstreams(lambda n, h, b: [OK])
    user_url = proxy.url.replace("http://", "http://user:p%40ss@")
    client_settings = ProxySettings({"http": user_url})

    async def go():
        client = LeanTransport(proxies=client_settings)
        result = await call(client, up.url)
        await client.close()
        return result
    assert run(go) == (200, b"{}")
    assert proxy.targets == [f"127.0.0.1:{up.port}"]
    import base64
    assert proxy.auth == ["Basic " + base64.b64encode(b"user:p@ss").decode()]


@pytest.mark.parametrize("kind", CLIENTS)
def test_no_proxy_goes_direct(kind, upstreams, proxy):
    up = upstreams(lambda n, h, b: [OK])
    settings = ProxySettings({"http": proxy.url, "https": proxy.url},
                             no_proxy="example.com,127.0.0.1")

    async def go():
        client = make_client(kind, proxies=settings)
        result = await call(client, up.url)
        await client.close()
        return result
    assert run(go) == (200, b"{}")
    assert proxy.targets == []


def test_proxy_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.internal")
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    settings = ProxySettings.from_environment()
    assert settings.proxy_for("https", "api.openai.com") == "http://proxy.corp:3128"
    assert settings.proxy_for("https", "models.internal") == ""
    assert settings.proxy_for("https", "localhost") == ""
