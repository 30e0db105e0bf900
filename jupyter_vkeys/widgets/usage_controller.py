"""MyUsage's logic, without widgets: the caller's keys, limits, spend and recent calls.

:class:`UsageController` is created by :class:`~.usage_view.MyUsage`. It asks the
gateway with the kernel's own virtual key (``VKEYS_URL`` and ``OPENAI_API_KEY``, put
in the kernel's environment by the server extension): ``GET /api/me`` (the key, its
parent and its user scope in full; team and project as limits only) and
``GET /api/me/calls`` (the owner's recent calls). The caller's other keys come from
the admin API when the notebook's credentials open it (a personal server: its one
user is the admin), else from what ``/api/me`` and the calls name.

Aggregations (per window, per notebook, per cell, per day) are plain functions over
the answers, tested without a gateway.
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .client import ApiClient, ApiProblem
from .credentials import Credentials, CredentialsError, notebook_credentials
from .rows import Bar, bars_of

__all__ = ["UsageController", "Window", "by_cell", "by_day", "by_notebook", "windows_of"]


@dataclass(frozen=True)
class Window:
    """One budget window over the caller: where, its bar and how much is left."""

    scope: str
    bar: Bar
    visibility: str  # full (own spend) or limits (a team/project cap: others' spend hidden)


def windows_of(me: dict[str, Any]) -> list[Window]:
    """Every budget window on the caller's path, most specific scope first."""
    out = []
    for report in me.get("limits") or []:
        for bar in bars_of(report):
            out.append(Window(str(report.get("scope")), bar,
                              str(report.get("visibility") or "full")))
    return out


def _cost(call: dict[str, Any]) -> float:
    return float(call.get("cost_usd") or 0)


def by_notebook(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{notebook, calls, tokens, cost_usd}]``, most expensive first."""
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"calls": 0, "tokens": 0,
                                                             "cost_usd": 0.0})
    for call in calls:
        group = groups[call.get("notebook_path") or "(no notebook)"]
        group["calls"] += 1
        group["tokens"] += int(call.get("input_tokens") or 0) + int(call.get("output_tokens")
                                                                    or 0)
        group["cost_usd"] += _cost(call)
    rows = [{"notebook": name, **values} for name, values in groups.items()]
    return sorted(rows, key=lambda r: (-r["cost_usd"], r["notebook"]))


def by_cell(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{notebook, cell, calls, cost_usd}]`` of calls made inside a cell (the cell is
    ``[n]`` by execution count, else its cell id), most expensive first."""
    groups: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"calls": 0, "cost_usd": 0.0})
    for call in calls:
        count, cell_id = call.get("execution_count"), call.get("cell_id")
        if count is None and not cell_id:
            continue
        cell = f"[{count}]" if count is not None else str(cell_id)[:12]
        group = groups[(call.get("notebook_path") or "(no notebook)", cell)]
        group["calls"] += 1
        group["cost_usd"] += _cost(call)
    rows = [{"notebook": nb, "cell": cell, **values} for (nb, cell), values in groups.items()]
    return sorted(rows, key=lambda r: (-r["cost_usd"], r["notebook"], r["cell"]))


def by_day(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{day, calls, cost_usd}]`` (UTC days), oldest first: the chart's data."""
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"calls": 0, "cost_usd": 0.0})
    for call in calls:
        start = call.get("start_time")
        if not isinstance(start, (int, float)):
            continue
        day = datetime.fromtimestamp(start, timezone.utc).strftime("%Y-%m-%d")
        groups[day]["calls"] += 1
        groups[day]["cost_usd"] += _cost(call)
    return [{"day": day, **values} for day, values in sorted(groups.items())]


class UsageController:
    """The caller's view of the gateway. ``url`` is the gateway base (``VKEYS_URL``,
    ``.../vkeys``) and ``key`` the virtual key (``OPENAI_API_KEY``); ``admin`` is how
    to find admin credentials for the list of the caller's keys (None: do not try)."""

    def __init__(self, url: str | None = None, key: str | None = None, *,
                 admin: Callable[[], Credentials] | None = notebook_credentials,
                 calls_limit: int = 500, timeout: float = 10) -> None:
        url = (url or os.environ.get("VKEYS_URL") or "").rstrip("/")
        key = key or os.environ.get("OPENAI_API_KEY") or ""
        self.problem: ApiProblem | None = None
        self.client: ApiClient | None = None
        if not url or not key.startswith("vk-"):
            self.problem = ApiProblem(
                0, "this kernel has no jupyter-vkeys key (VKEYS_URL and a vk- key in "
                   "OPENAI_API_KEY)", "credentials",
                "start the notebook from a Jupyter server with the jupyter_vkeys extension "
                "enabled, or pass MyUsage(url=..., key=...)")
        else:
            self.client = ApiClient(url + "/api", key, "Bearer", timeout)
        self.admin = admin
        self.calls_limit = calls_limit
        self.me: dict[str, Any] = {}
        self.calls: list[dict[str, Any]] = []
        self.keys: list[dict[str, Any]] = []
        self.refreshed_at: float | None = None
        self._lock = threading.RLock()

    def refresh(self) -> bool:
        """Ask ``/api/me`` and ``/api/me/calls`` (and the admin API for the caller's keys,
        when it answers). True on success, else :attr:`problem` says why. Called by the
        view at start, by its refresh button and by its live timer."""
        with self._lock:
            if self.client is None:
                return False
            try:
                me = self.client.get("/me")
                calls = self.client.get("/me/calls", limit=self.calls_limit)["calls"]
            except ApiProblem as exc:
                self.problem = exc
                return False
            self.me, self.calls, self.problem = me, calls, None
            self.keys = self._keys(me, calls)
            self.refreshed_at = time.time()
            return True

    def _keys(self, me: dict[str, Any], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The owner's keys from the admin API if it answers, else the ones we know of."""
        owner = me.get("owner")
        if owner and self.admin is not None:
            try:
                found = self.admin()
                admin = ApiClient(found.api_url, found.token, "token", self.client.timeout)
                keys = admin.get("/keys", owner=owner)["keys"]
                return [k for k in keys if k.get("state") == "active"
                        or k.get("id") in (me.get("id"), me.get("parent_id"))]
            except (CredentialsError, ApiProblem, KeyError, TypeError):
                pass
        known = {me.get("id"): {k: me.get(k) for k in ("id", "alias", "state", "parent_id",
                                                       "policy", "metadata", "expires_at")}}
        for call in calls:
            known.setdefault(call.get("key_id"), {"id": call.get("key_id"),
                                                  "alias": call.get("key_alias"),
                                                  "state": "?"})
        return [k for k in known.values() if k.get("id")]

    @property
    def windows(self) -> list[Window]:
        return windows_of(self.me)

    def remaining_usd(self) -> float | None:
        """What the tightest window still allows (None without any cap)."""
        left = [w.bar.remaining_usd for w in self.windows]
        return min(left) if left else None

    def recent(self, count: int = 10) -> list[dict[str, Any]]:
        """The newest ``count`` calls."""
        return self.calls[:count]
