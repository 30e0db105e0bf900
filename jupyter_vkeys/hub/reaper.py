"""Kernel keys outlive no server: revoke those of servers the Hub no longer runs.

A single-user server revokes its kernels' keys when they stop, and all of them when it
stops (:mod:`jupyter_vkeys.server_extension.hub_broker`). A server that is killed does
neither, so the service's :class:`Reaper` asks the Hub, every ``interval`` seconds, about
each server that still holds an active kernel key (``GET /users/{name}``, with the
service's own token: its role needs ``read:users:name`` and ``read:servers``), and
revokes the keys of servers the Hub does not list as running.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from .issuer import KernelKeyIssuer

log = logging.getLogger("jupyter_vkeys.hub")
ACTOR = "jupyter-vkeys:hub-reaper"


class Reaper:
    """Started and stopped by :func:`~.service.run_service`."""

    def __init__(self, issuer: KernelKeyIssuer, hub_auth: Any, *, interval: float) -> None:
        self.issuer = issuer
        self.api_url = hub_auth.api_url.rstrip("/")
        self.api_token = hub_auth.api_token
        self.interval = interval
        self._task: asyncio.Task | None = None
        self._warned = False

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception:  # the next sweep tries again; never let the task die
                log.exception("jupyter-vkeys: checking servers with the Hub failed")

    async def running(self, user: str) -> set[str] | None:
        """Names of ``user``'s running servers ('' is the default one), or None when the
        Hub did not say (unreachable, or the service's role lacks the scopes)."""
        request = HTTPRequest(f"{self.api_url}/users/{quote(user, safe='')}",
                              headers={"Authorization": f"token {self.api_token}"},
                              request_timeout=10)
        try:
            response = await AsyncHTTPClient().fetch(request)
        except HTTPClientError as exc:
            if exc.code == 404:
                return set()  # the user is gone: so are their servers
            if not self._warned:
                self._warned = True
                log.warning("jupyter-vkeys: the Hub answered %s to GET /users/%s; the "
                            "service's role needs read:users:name and read:servers to "
                            "revoke the keys of killed servers", exc.code, user)
            return None
        model = json.loads(response.body)
        servers = model.get("servers")
        if servers is None:
            return None  # no read:servers: the model does not say
        return {name for name, server in servers.items()
                if server.get("ready") or server.get("pending") == "spawn"}

    async def sweep(self) -> list[str]:
        """One check: revoke the kernel keys of every server that is not running."""
        revoked: list[str] = []
        for user, server in sorted(self.issuer.active_servers()):
            running = await self.running(user)
            if running is not None and server not in running:
                revoked += self.issuer.revoke_server(user, server, actor=ACTOR)
        return revoked
