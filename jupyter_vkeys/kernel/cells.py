"""Cost per cell and dry runs, inside an IPython kernel: the ``jupyter_vkeys.kernel.cells``
IPython extension.

The vkeys kernel provisioner loads it into every ipykernel kernel it starts
(``--IPKernelApp.extra_extensions``). Around each cell execution it tells the
gateway, with the kernel's own virtual key, that the cell started
(``POST {VKEYS_URL}/api/cells``, with the execution count and the frontend's cell
id) and that it ended; the gateway attributes the key's calls in between to that
cell and answers a summary. After a cell that called a model, one quiet line under
its output says: calls, tokens, cost, and what is left of the tightest budget
window. ``%vkeys quiet`` / ``%vkeys loud`` turn the line off and on.

``%%vkeys dry_run`` runs a cell with every call answered by the offline fake at no
cost, then reports what the cell would have cost on the real models it named (see
:class:`DryRunReport`); :func:`estimate` does the same for one call.

It never breaks a kernel: with no key it does nothing; when the gateway is down or
the key is refused it says so once (with what to do) and stays quiet.
"""

from __future__ import annotations

import html
import json
import os
import sys
import urllib.error
from typing import Any

from .client import advice, call_gateway


def _counts_before_pre_run() -> bool:
    """Whether this IPython increments ``execution_count`` before ``pre_run_cell`` (9.9+)."""
    try:
        import IPython
        return tuple(IPython.version_info[:2]) >= (9, 9)
    except (ImportError, AttributeError, TypeError):
        return False
from .report import resets, usd

TIMEOUT = 2.0


class CellCost:
    """The extension's state in one kernel (one instance, created at load)."""

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.url = os.environ.get("VKEYS_URL", "").rstrip("/")
        key = os.environ.get("OPENAI_API_KEY", "")
        self.key = key if key.startswith("vk-") else ""
        self.quiet = False
        self.nested = 0  # > 0 while %%vkeys dry_run runs its body
        self.told: set[str] = set()  # problems already reported once
        self.cell_id = ""
        self.sent_count: int | None = None
        # how far ahead of In[n] the shell's counter is at pre_run_cell
        self.count_offset = 1 if _counts_before_pre_run() else 0

    @property
    def active(self) -> bool:
        """Whether this kernel has a key to attribute calls with."""
        return bool(self.url and self.key)

    # -- the gateway -----------------------------------------------------------------
    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """POST to the gateway with the kernel's key; None (after telling once) on failure."""
        try:
            return call_gateway(self.url, self.key, path, body, timeout=TIMEOUT)
        except urllib.error.HTTPError as exc:
            message = _message(exc)
            if exc.code == 401:
                tip = advice(message)
                self.tell_once("key", f"this kernel's key was refused: {message}"
                                      + (f"; {tip}" if tip else ""))
            else:
                self.tell_once(f"http{exc.code}", f"the gateway answered {exc.code}: {message}")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            self.tell_once("down", f"cost per cell is off: the gateway at {self.url} does not "
                                   f"answer ({reason}); calls may fail too")
        return None

    def tell_once(self, topic: str, text: str) -> None:
        """Print one line about a problem, the first time only."""
        if topic not in self.told:
            self.told.add(topic)
            print(f"jupyter-vkeys: {text}", file=sys.stderr)

    # -- IPython events --------------------------------------------------------------
    def pre_run_cell(self, info: Any) -> None:
        """IPython's ``pre_run_cell`` event: the cell starts on the gateway too."""
        if not self.active or self.nested:
            return
        self.cell_id = str(getattr(info, "cell_id", "") or "")[:256]
        self.sent_count = self.cell_number(getattr(info, "store_history", True))
        self.post("/api/cells", {"action": "start", "cell_id": self.cell_id,
                                 "execution_count": self.sent_count, "dry_run": False})

    def cell_number(self, store_history: bool) -> int | None:
        """The In[n] of the cell that is starting. IPython 9.9 and later count the cell
        before ``pre_run_cell`` (earlier versions after it); ``post_run_cell`` checks the
        guess against the cell's result and corrects the following cells if it was off."""
        count = getattr(self.shell, "execution_count", None)
        if not isinstance(count, int):
            return None
        return count - (self.count_offset if store_history else 0)

    def post_run_cell(self, result: Any) -> None:
        """IPython's ``post_run_cell`` event: close the cell and show its cost line."""
        if not self.active or self.nested:
            return
        actual = getattr(result, "execution_count", None)
        if isinstance(actual, int) and isinstance(self.sent_count, int) and \
                actual != self.sent_count:
            self.count_offset += self.sent_count - actual  # an IPython we did not know
        summary = self.post("/api/cells", {"action": "end"})
        if summary and summary.get("calls") and not self.quiet:
            _display_line(cost_line(summary))

    # -- magics ----------------------------------------------------------------------
    def dry_run(self, cell: str) -> "DryRunReport | None":
        """Run ``cell`` with every call answered by the fake; return the report."""
        if not self.active:
            print("jupyter-vkeys: dry runs need the kernel's virtual key (VKEYS_URL and a vk- "
                  "key in OPENAI_API_KEY, set by the vkeys kernel provisioner)", file=sys.stderr)
            return None
        started = self.post("/api/cells", {"action": "start", "cell_id": self.cell_id,
                                           "execution_count": self.sent_count,  # this cell's
                                           "dry_run": True})
        if started is None:
            return None
        self.nested += 1
        try:
            self.shell.run_cell(cell, store_history=False)
        finally:
            self.nested -= 1
            summary = self.post("/api/cells", {"action": "end"})
        return DryRunReport(summary) if summary is not None else None


def _message(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read())
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError, OSError):
        return str(exc.reason)


def _tokens(n: int) -> str:
    return f"{n:,} token" + ("" if n == 1 else "s")


def cost_line(summary: dict[str, Any]) -> str:
    """``vkeys · 2 calls · 1,234 tokens · $0.0012 · month budget: $18.40 of $20.00 left,
    resets in 30 days``: the line shown under a cell's output (the budget is the caller's
    tightest window: its key's, its parent key's or its user's)."""
    calls = summary.get("calls", 0)
    parts = [f"{calls} call" + ("" if calls == 1 else "s"),
             _tokens(int(summary.get("input_tokens", 0)) + int(summary.get("output_tokens", 0))),
             usd(float(summary.get("cost_usd") or 0))]
    if summary.get("refused"):
        parts.append(f"{summary['refused']} refused")
    if summary.get("failed"):
        parts.append(f"{summary['failed']} failed")
    tight = summary.get("tightest_budget")
    if tight:
        when = resets(tight.get("resets_at")).split(" (", 1)[0]
        parts.append(f"{tight['period']} budget: {usd(float(tight['remaining_usd']))} of "
                     f"{usd(float(tight['cap_usd']))} left, resets {when}")
    return "vkeys · " + " · ".join(parts)


def _display_line(text: str) -> None:
    """One quiet grey line (text/plain for terminals), outside MathJax's reach."""
    try:
        from IPython.display import display
    except ImportError:
        print(text)
        return
    display({"text/plain": text,
             "text/html": "<div class='mathjax_ignore vkeys-cell-cost' style='color:#757575;"
                          f"font-size:12px'>{html.escape(text)}</div>"}, raw=True)


class DryRunReport(dict):
    """What a dry-run cell would have cost: per model, calls, input tokens, expected and
    worst-case cost, and whether the key's limits allow it. Renders as HTML and text."""

    def text(self) -> str:
        """Plain-text rendering (also ``repr``)."""
        models = self.get("models") or []
        lines = [f"dry run: {self.get('calls', 0)} call(s) answered by the offline fake, "
                 "nothing spent"]
        for row in models:
            money = ("unpriced" if row.get("expected_usd") is None else
                     f"expected {usd(row['expected_usd'])}, worst case {usd(row['worst_usd'])}")
            verdict = "allowed" if row.get("allowed") else "refused: " + "; ".join(
                row.get("verdicts") or [])
            lines.append(f"  {row['model']}: {row['calls']} call(s), "
                         f"{_tokens(row['input_tokens'])} in, {money} ({verdict})")
        if not models:
            lines.append("  no model was called")
        total = self.totals()
        if total is not None:
            lines.append(f"  total: expected {usd(total[0])}, worst case {usd(total[1])}")
        return "\n".join(lines)

    def totals(self) -> tuple[float, float] | None:
        """(expected, worst case) in USD over priced models; None if there are none."""
        priced = [r for r in self.get("models") or [] if r.get("expected_usd") is not None]
        if not priced:
            return None
        return sum(r["expected_usd"] for r in priced), sum(r["worst_usd"] for r in priced)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.text())

    def _repr_html_(self) -> str:
        """A table per model, money right-aligned, refusals in red."""
        esc = html.escape
        cell = "padding:2px 10px;text-align:left;white-space:nowrap"
        num = "padding:2px 10px;text-align:right;white-space:nowrap"
        rows = []
        for row in self.get("models") or []:
            priced = row.get("expected_usd") is not None
            verdict = ("<span style='color:#2e7d32'>allowed</span>" if row.get("allowed") else
                       "<span style='color:#c62828'>refused: "
                       + esc("; ".join(row.get("verdicts") or [])) + "</span>")
            rows.append(
                f"<tr><td style='{cell}'><code>{esc(row['model'])}</code></td>"
                f"<td style='{num}'>{row['calls']}</td>"
                f"<td style='{num}'>{row['input_tokens']:,}</td>"
                f"<td style='{num}' title='at {row.get('typical_output_tokens', '?')} output "
                f"tokens ({esc(str(row.get('typical_output_source', '')))})'>"
                f"{esc(usd(row['expected_usd'])) if priced else 'unpriced'}</td>"
                f"<td style='{num}'>{esc(usd(row['worst_usd'])) if priced else 'unpriced'}</td>"
                f"<td style='{cell}'>{verdict}</td></tr>")
        total = self.totals()
        if total is not None:
            rows.append(f"<tr style='border-top:1px solid #ccc;font-weight:bold'>"
                        f"<td style='{cell}'>total</td><td></td><td></td>"
                        f"<td style='{num}'>{esc(usd(total[0]))}</td>"
                        f"<td style='{num}'>{esc(usd(total[1]))}</td><td></td></tr>")
        head = "".join(f"<th style='{cell if i in (0, 5) else num}'>{h}</th>" for i, h in
                       enumerate(["model", "calls", "input tokens", "expected", "worst case",
                                  "your limits"]))
        body = "".join(rows) or f"<tr><td style='{cell}' colspan='6'>no model was called</td></tr>"
        return (f"<div class='mathjax_ignore vkeys-dry-run' style='font-size:13px'>"
                f"<div><b>Dry run</b>: {self.get('calls', 0)} call(s) answered by the offline "
                f"fake, nothing spent. What the real models would have cost:</div>"
                f"<table style='border-collapse:collapse'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table></div>")


class Estimate(dict):
    """One call's estimate from ``POST /api/estimate`` (see :func:`estimate`)."""

    def __repr__(self) -> str:
        if self.get("expected_usd") is None:
            money = "no known price"
        else:
            money = (f"expected {usd(self['expected_usd'])} (at "
                     f"{self['typical_output_tokens']:,} output tokens), worst case "
                     f"{usd(self['worst_usd'])}")
        return (f"{self.get('model')}: {_tokens(self.get('input_tokens', 0))} in, {money}; "
                f"{self.get('verdict')}")

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def _repr_html_(self) -> str:
        return (f"<div class='mathjax_ignore vkeys-estimate'>{html.escape(repr(self))}</div>")


_STATE: CellCost | None = None


def estimate(model: str, messages: list | None = None, max_tokens: int | None = None, *,
             operation: str | None = None, **params: Any) -> Estimate:
    """What one call would cost on ``model``, without making it: input tokens counted,
    expected cost (typical output length for the model, from the warehouse's history
    when it has some), worst case (at ``max_tokens``), and whether this kernel key's
    limits allow it. ``operation`` defaults to ``messages`` for Claude models, else
    ``chat.completions``; other request fields go in ``params``."""
    state = _STATE or CellCost(None)
    if not state.active:
        raise RuntimeError("estimate() needs the kernel's virtual key (VKEYS_URL and a vk- key "
                           "in OPENAI_API_KEY, set by the vkeys kernel provisioner)")
    op = operation or ("messages" if model.startswith("claude") else "chat.completions")
    body: dict[str, Any] = {"model": model, **params}
    if messages is not None:
        body["messages"] = messages
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    try:
        return Estimate(call_gateway(state.url, state.key, "/api/estimate",
                                     {"operation": op, "body": body}))
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"the gateway refused the estimate: {_message(exc)}") from None


def load_ipython_extension(shell: Any) -> None:
    """Called by IPython (the provisioner's ``extra_extensions``, or ``%load_ext``):
    hooks the cell events, registers ``%vkeys`` (with ``quiet``/``loud``) and
    ``%%vkeys dry_run``."""
    global _STATE
    from . import register_magic

    register_magic(shell)
    report = shell.magics_manager.magics["line"]["vkeys"]
    state = _STATE = CellCost(shell)
    if getattr(shell, "_vkeys_cells", None) is not None:
        old = shell._vkeys_cells
        shell.events.unregister("pre_run_cell", old.pre_run_cell)
        shell.events.unregister("post_run_cell", old.post_run_cell)
    shell._vkeys_cells = state
    shell.events.register("pre_run_cell", state.pre_run_cell)
    shell.events.register("post_run_cell", state.post_run_cell)

    def vkeys(line: str = "", cell: str | None = None) -> Any:
        """%vkeys: this kernel's key, limits and spend; %vkeys quiet|loud: the cost line
        under cells off|on; %%vkeys dry_run: run the cell on the fake, report the cost."""
        word = line.strip()
        if cell is not None:
            if word != "dry_run":
                print("jupyter-vkeys: usage: %%vkeys dry_run", file=sys.stderr)
                return None
            report_ = state.dry_run(cell)
            if report_ is not None:
                from IPython.display import display
                display(report_)
            return None
        if word in ("quiet", "loud"):
            state.quiet = word == "quiet"
            print(f"jupyter-vkeys: cost line under cells {'off' if state.quiet else 'on'}")
            return None
        return report(line)

    shell.register_magic_function(vkeys, "line_cell", "vkeys")
