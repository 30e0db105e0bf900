"""Kernel keys outlive no server: revoke those of servers the Hub no longer runs.

A single-user server revokes its kernels' keys when they stop, and all of them when it
stops (:mod:`jupyter_vkeys.server_extension.hub_broker`). A server that is killed does
neither, so the service's :class:`Reaper` asks the Hub, every ``interval`` seconds, about
the servers it runs (one paginated ``GET /users?state=active``, with the service's own
token: its role needs ``list:users``, ``read:users:name`` and ``read:servers``), and
revokes the kernel keys of every server that is not among them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

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

    async def _get(self, path: str) -> dict | list | None:
        """One GET of the Hub's API with the service's token; None when the Hub did not
        answer or refused (warned once: the role probably lacks a scope)."""
        request = HTTPRequest(f"{self.api_url}{path}", request_timeout=10, headers={
            "Authorization": f"token {self.api_token}",
            "Accept": "application/jupyterhub-pagination+json"})
        try:
            response = await AsyncHTTPClient().fetch(request)
        except (HTTPClientError, OSError) as exc:
            if not self._warned:
                self._warned = True
                log.warning("jupyter-vkeys: the Hub answered %s to GET %s; the service's "
                            "role needs list:users, read:users:name and read:servers to "
                            "revoke the keys of killed servers", getattr(exc, "code", exc),
                            path.split("?")[0])
            return None
        return json.loads(response.body)

    async def running(self) -> set[tuple[str, str]] | None:
        """``(user, server name)`` of every server the Hub runs or is starting ('' is the
        default server), read page by page; None when the Hub did not say."""
        found: set[tuple[str, str]] = set()
        offset = 0
        while True:
            page = await self._get(f"/users?state=active&limit=200&offset={offset}")
            if page is None:
                return None
            items = page.get("items", []) if isinstance(page, dict) else page
            for user in items:
                servers = user.get("servers")
                if servers is None:
                    return None  # no read:servers: the model does not say
                found |= {(user["name"], name) for name, server in servers.items()
                          if server.get("ready") or server.get("pending") == "spawn"}
            following = (page.get("_pagination") or {}).get("next") \
                if isinstance(page, dict) else None
            if not following or not items:
                return found
            offset = int(following.get("offset", offset + len(items)))

    async def sweep(self) -> list[str]:
        """One check: revoke the kernel keys of every server that is not running."""
        holders = self.issuer.active_servers()
        if not holders:
            return []
        running = await self.running()
        if running is None:
            return []
        revoked: list[str] = []
        for user, server in sorted(holders - running):
            revoked += self.issuer.revoke_server(user, server, actor=ACTOR)
        return revoked
