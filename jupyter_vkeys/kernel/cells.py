"""Cost per cell, inside an ipykernel kernel (an IPython extension).

The vkeys provisioner loads this module into the ipykernel kernels it starts
(``--IPKernelApp.extra_extensions``). Before each cell runs it tells the gateway
``{VKEYS_URL}/api/cells`` (with the kernel's own key) that the cell starts; after
it, that it ended. The gateway answers with what the calls of this key in between
cost, and one quiet line goes under a cell that called a model:

    vkeys · 2 calls · 48 tokens · $0.000094 this cell · $19.99 left of $20.00/month

``%vkeys quiet`` turns the line off (``%vkeys loud`` back on). It never breaks a
kernel: when the gateway is down it says so once and stays quiet (trying again at
most once a minute); a revoked or expired key is said once, with what to do.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from .client import advice
from .report import resets, usd

RETRY_SECONDS = 60.0
TIMEOUT = 2.0

ACTIVE: "CellReporter | None" = None


def _post(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {key}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
        return json.loads(resp.read())


def cell_line(summary: dict[str, Any], now: float | None = None) -> str:
    """The quiet line of one cell's summary (as the gateway's ``/api/cells`` answers)."""
    calls = summary.get("calls", 0)
    tokens = summary.get("input_tokens", 0) + summary.get("output_tokens", 0)
    parts = [f"{calls} call{'s' if calls != 1 else ''}", f"{tokens:,} tokens",
             f"{usd(summary.get('cost_usd', 0.0))} this cell"]
    if summary.get("refused"):
        parts.append(f"{summary['refused']} refused")
    tight = summary.get("tightest")
    if tight:
        parts.append(f"{usd(tight['remaining_usd'])} left of {usd(tight['usd'])}/"
                     f"{tight['period']} ({tight['scope']}, resets "
                     f"{resets(tight.get('resets_at'), now).split(' (')[0]})")
    return "vkeys · " + " · ".join(parts)


class CellReporter:
    """Tells the gateway when cells start and end; shows the cost line after a cell."""

    def __init__(self, url: str, key: str, show: Callable[[str], None],
                 post: Callable[[str, str, dict[str, Any]], dict[str, Any]] = _post,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url.rstrip("/") + "/api/cells"
        self.key = key
        self.show = show
        self.post = post
        self.clock = clock
        self.quiet = False
        self.off_reason = ""  # set once something is wrong: said once, then quiet
        self.paused_until = 0.0
        self.started = False

    def _send(self, body: dict[str, Any]) -> dict[str, Any] | None:
        if self.off_reason == "key" or self.clock() < self.paused_until:
            return None
        try:
            answer = self.post(self.url, self.key, body)
        except urllib.error.HTTPError as exc:
            self._problem(exc)
            return None
        except Exception as exc:  # gateway down, timeout, bad answer: never break a cell
            self._say_once("down", f"jupyter-vkeys: cell costs are paused, the gateway at "
                                   f"{self.url.rsplit('/api/', 1)[0]} does not answer "
                                   f"({getattr(exc, 'reason', exc)}); calls still count")
            self.paused_until = self.clock() + RETRY_SECONDS
            return None
        return answer

    def _problem(self, exc: urllib.error.HTTPError) -> None:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except Exception:
            message = str(exc)
        if exc.code == 401:
            self._say_once("key", f"jupyter-vkeys: this kernel's key is refused ({message}); "
                                  f"{advice(message)}")
        else:
            self._say_once("other", f"jupyter-vkeys: cell costs are off ({exc.code}: "
                                    f"{message})")
            self.paused_until = self.clock() + RETRY_SECONDS

    def _say_once(self, reason: str, message: str) -> None:
        if self.off_reason != reason:
            self.off_reason = reason
            self.show(message)

    def pre_run_cell(self, info: Any) -> None:
        """IPython's ``pre_run_cell`` event (not for silent executions)."""
        self.started = self._send({"event": "start", "cell_id": getattr(info, "cell_id", None)
                                   or "", "execution_count": None}) is not None

    def post_run_cell(self, result: Any) -> None:
        """IPython's ``post_run_cell`` event: the cost line of a cell that called a model."""
        if not self.started:
            return
        self.started = False
        info = getattr(result, "info", None)
        summary = self._send({"event": "end",
                              "cell_id": getattr(info, "cell_id", None) or "",
                              "execution_count": getattr(result, "execution_count", None)})
        if summary and summary.get("calls", 0) + summary.get("refused", 0) > 0 and \
                not self.quiet:
            self.show(cell_line(summary))


def _show_quietly(line: str) -> None:
    """Display a line under the cell: small grey HTML in JupyterLab, text elsewhere."""
    import html

    from IPython.display import display
    display({"text/plain": line,
             "text/html": f"<div class='mathjax_ignore vkeys-cell' style='opacity:.65;"
                          f"font-size:11px'>{html.escape(line)}</div>"}, raw=True)


def load_ipython_extension(ipython: Any) -> None:
    """Loaded by the provisioner's kernel command line (or ``%load_ext``): register the
    cell events and the ``%vkeys`` magic. Without a key in the environment: nothing."""
    global ACTIVE
    from . import register_magic

    register_magic(ipython)
    url = os.environ.get("VKEYS_URL", "")
    key = os.environ.get("OPENAI_API_KEY", "")
    if not url or not key.startswith("vk-") or ACTIVE is not None:
        return
    ACTIVE = CellReporter(url, key, _show_quietly)
    ipython.events.register("pre_run_cell", ACTIVE.pre_run_cell)
    ipython.events.register("post_run_cell", ACTIVE.post_run_cell)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext``: stop reporting cells."""
    global ACTIVE
    if ACTIVE is not None:
        ipython.events.unregister("pre_run_cell", ACTIVE.pre_run_cell)
        ipython.events.unregister("post_run_cell", ACTIVE.post_run_cell)
        ACTIVE = None
