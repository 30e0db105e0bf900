"""The fake provider over HTTP: ``python -m jupyter_vkeys.providers.fake_server --port 9100``.

Serves the same deterministic answers as the in-process fake, at the real
providers' paths (OpenAI base URL ``http://host:port/v1``, Anthropic base URL
``http://host:port``), so the gateway's relay path (pooled client, headers,
streaming, errors) runs on real sockets in tests, demos and benchmarks.

With ``--expect-key`` it answers 401 unless the request carries that key, the
way a real provider would. ``GET /_fake/requests`` lists what it received
(paths and header names, and whether the expected key or any ``vk-`` token was
seen; never header values).
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import orjson
import tornado.httpserver
import tornado.iostream
import tornado.web

from .fake import answer

ROUTES = {
    "/v1/chat/completions": "chat.completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/responses": "responses",
    "/v1/messages": "messages",
    "/v1/messages/count_tokens": "messages.count_tokens",
}


class FakeProviderHandler(tornado.web.RequestHandler):
    """One fake provider endpoint; ``operation`` comes from :data:`ROUTES`."""

    def initialize(self, operation: str, expect_key: str, seen: list) -> None:
        self.operation = operation
        self.expect_key = expect_key
        self.seen = seen

    def check_xsrf_cookie(self) -> None:  # an API server, not a web page
        pass

    def _presented_key(self) -> str:
        auth = self.request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return self.request.headers.get("x-api-key", "") or self.request.headers.get("api-key", "")

    async def post(self) -> None:
        key = self._presented_key()
        self.seen.append({"path": self.request.path,
                          "headers": sorted(k.lower() for k in self.request.headers),
                          "key_ok": not self.expect_key or key == self.expect_key,
                          "saw_vkey": "vk-" in str(self.request.headers) or b"vk-" in self.request.body})
        del self.seen[:-1000]
        headers = {k.lower(): v for k, v in self.request.headers.items()}
        if self.expect_key and key != self.expect_key:
            fake = answer(self.operation, {}, {"x-vkeys-fake-error": "401"})
        else:
            try:
                body = orjson.loads(self.request.body)
            except orjson.JSONDecodeError:
                fake = answer(self.operation, {}, {"x-vkeys-fake-error": "400"})
            else:
                fake = answer(self.operation, body, headers)
        if fake.hang:
            await asyncio.sleep(3600)
        if fake.latency:
            await asyncio.sleep(fake.latency)
        self.set_status(fake.status)
        for name, value in fake.headers.items():
            self.set_header(name, value)
        try:
            for i, part in enumerate(fake.parts):
                if fake.cut_after is not None and i >= fake.cut_after:
                    self.request.connection.stream.close()  # abrupt: no terminating chunk
                    return
                if i and fake.chunk_delay:
                    await asyncio.sleep(fake.chunk_delay)
                self.write(part)
                if len(fake.parts) > 1:
                    await self.flush()
        except tornado.iostream.StreamClosedError:
            return


class FakeModelsHandler(tornado.web.RequestHandler):
    """``GET /v1/models``: a short static list, as providers answer."""

    def get(self) -> None:
        names = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "claude-haiku-4-5",
                 "claude-sonnet-4-5"]
        self.write({"object": "list", "data": [{"id": n, "object": "model", "created": 0,
                                                "owned_by": "vkeys-fake"} for n in names]})


class SeenHandler(tornado.web.RequestHandler):
    """``GET /_fake/requests``: what the fake received (for tests)."""

    def initialize(self, seen: list) -> None:
        self.seen = seen

    def get(self) -> None:
        self.set_header("content-type", "application/json")
        self.write(orjson.dumps(self.seen))


def make_app(expect_key: str = "") -> tornado.web.Application:
    """The fake provider application (used by tests, benchmarks and ``__main__``)."""
    seen: list = []
    handlers = [(path, FakeProviderHandler, {"operation": op, "expect_key": expect_key,
                                             "seen": seen}) for path, op in ROUTES.items()]
    handlers += [(r"/v1/models", FakeModelsHandler), (r"/_fake/requests", SeenHandler,
                                                      {"seen": seen})]
    return tornado.web.Application(handlers)


def main(argv: list[str] | None = None) -> None:
    """Run the fake provider until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--expect-key", default="", help="answer 401 unless this key is sent")
    parser.add_argument("--certfile", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--keyfile", help="private key of --certfile")
    args = parser.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def serve() -> None:
        ssl_options = None
        if args.certfile:
            import ssl
            ssl_options = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_options.load_cert_chain(args.certfile, args.keyfile)
        server = tornado.httpserver.HTTPServer(make_app(args.expect_key), ssl_options=ssl_options)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        sock.listen(1024)
        sock.setblocking(False)
        server.add_sockets([sock])
        print(f"fake provider listening on {'https' if ssl_options else 'http'}://"
              f"{args.host}:{sock.getsockname()[1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
