"""The baseline: the best trivial Python proxy (tornado + aiohttp's pooled keep-alive client).

It forwards ``/v1/*`` POSTs to one upstream, streaming the body back as it
arrives, and does nothing else: no auth, no policy, no metering, no logging.
Everything jupyter-vkeys adds is measured against this.

Run: ``python benchmarks/trivial_proxy.py --port 9300 --upstream http://127.0.0.1:9200``.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl

import aiohttp
import tornado.httpserver
import tornado.web

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
       "date", "server"}


class Proxy(tornado.web.RequestHandler):
    def initialize(self, upstream: str, session_box: list) -> None:
        self.upstream = upstream
        self.session_box = session_box

    def check_xsrf_cookie(self) -> None:
        pass

    async def post(self, path: str) -> None:
        session = self.session_box[0]
        async with session.post(self.upstream + "/v1/" + path, data=self.request.body,
                                headers={"content-type": "application/json",
                                         "authorization": "Bearer sk-baseline"}) as resp:
            self.set_status(resp.status)
            self.request.connection.stream.set_nodelay(True)  # stream events as they come
            for name, value in resp.headers.items():
                if name.lower() not in HOP:
                    self.set_header(name, value)
            async for chunk in resp.content.iter_any():
                self.write(chunk)
                await self.flush()


async def serve(port: int, upstream: str, insecure: bool) -> None:
    context = ssl.create_default_context()
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000, ssl=context),
                                    auto_decompress=False,
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=600))
    app = tornado.web.Application([(r"/v1/(.*)", Proxy, {"upstream": upstream,
                                                         "session_box": [session]})])
    server = tornado.httpserver.HTTPServer(app)
    server.listen(port, "127.0.0.1", backlog=1024)
    print(f"baseline proxy ready on {port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9300)
    parser.add_argument("--upstream", default="http://127.0.0.1:9200")
    parser.add_argument("--insecure", action="store_true", help="accept a self-signed upstream")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    if not args.no_uvloop:
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
    asyncio.run(serve(args.port, args.upstream, args.insecure))


if __name__ == "__main__":
    main()
