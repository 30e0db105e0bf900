"""The lean upstream client against raw sockets: keep-alive reuse, a connection the server
closed while idle, chunked bodies, Connection: close, read timeouts."""

from __future__ import annotations

import asyncio

import pytest

from jupyter_vkeys.http.client import LeanTransport
from jupyter_vkeys.http.upstream import UpstreamError, UpstreamRequest

OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
           b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
CLOSE = (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")


async def serve(behaviour):
    """A raw server: ``behaviour(n)`` gives the bytes to answer the n-th request with, or
    "close-after" to answer then drop the connection silently, or "hang"."""
    stats = {"connections": 0, "requests": 0}

    async def handle(reader, writer):
        stats["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                stats["requests"] += 1
                answer, then = behaviour(stats["requests"])
                if answer:
                    writer.write(answer)
                    await writer.drain()
                if then == "close":
                    writer.close()
                    return
                if then == "hang":
                    await asyncio.sleep(10)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], stats


def request(port: int) -> UpstreamRequest:
    return UpstreamRequest("POST", f"http://127.0.0.1:{port}/v1/x", {"content-type": "a/b"},
                           b'{"a": 1}')


async def read_all(transport, port):
    response = await transport.send(request(port))
    body = b"".join([c async for c in response.chunks()])
    response.close()
    return response.status, body


def test_keep_alive_reuse_and_chunked_bodies():
    async def run():
        server, port, stats = await serve(lambda n: (OK if n % 2 else CHUNKED, ""))
        client = LeanTransport()
        results = [await read_all(client, port) for _ in range(6)]
        await client.close()
        server.close()
        return results, stats
    results, stats = asyncio.run(run())
    assert [b for _, b in results] == [b"{}", b"hello world"] * 3
    assert stats == {"connections": 1, "requests": 6}


def test_connection_closed_while_idle_is_retried_once():
    async def run():
        # Every response is followed by a silent close, as an idle timeout would do.
        server, port, stats = await serve(lambda n: (OK, "close"))
        client = LeanTransport()
        results = []
        for _ in range(3):
            results.append(await read_all(client, port))
            await asyncio.sleep(0.05)  # let the close arrive while the connection is idle
        await client.close()
        server.close()
        return results, stats
    results, stats = asyncio.run(run())
    assert results == [(200, b"{}")] * 3
    assert stats["requests"] == 3 and stats["connections"] == 3


def test_connection_close_header_is_not_reused():
    async def run():
        server, port, stats = await serve(lambda n: (CLOSE, ""))
        client = LeanTransport()
        for _ in range(3):
            assert await read_all(client, port) == (200, b"{}")
        await client.close()
        server.close()
        return stats
    assert asyncio.run(run())["connections"] == 3


def test_read_timeout_and_refused_connection():
    async def run():
        server, port, _ = await serve(lambda n: (b"", "hang"))
        client = LeanTransport(read_timeout=0.2)
        with pytest.raises(UpstreamError) as timeout:
            await client.send(request(port))
        server.close()
        await server.wait_closed()
        with pytest.raises(UpstreamError) as refused:
            await LeanTransport().send(request(port))
        return timeout.value, refused.value
    timeout, refused = asyncio.run(run())
    assert timeout.kind == "timeout" and refused.kind == "unreachable"
