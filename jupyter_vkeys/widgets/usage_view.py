"""``MyUsage()``: the caller's keys, limits, spend per window, remaining budget, recent
calls, cost per notebook and per cell, and a chart of spend per day, as ipywidgets over
a :class:`~.usage_controller.UsageController`."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from ..kernel.report import resets, usd
from .live import LiveView
from .markup import bar_html, notice_html, table_html, when, wrap
from .usage_controller import UsageController, by_cell, by_day, by_notebook

__all__ = ["MyUsage"]

def _auto() -> w.Layout:
    return w.Layout(width="auto")


class MyUsage(LiveView, w.VBox):
    """What the notebook's user has spent and may still spend. ``MyUsage()`` uses the
    kernel's own key; ``MyUsage(url=..., key=...)`` another; ``controller=`` a ready
    one. ``interval``: live refresh period in seconds while displayed."""

    def __init__(self, url: str | None = None, key: str | None = None, *,
                 controller: UsageController | None = None, interval: float = 5.0,
                 chart: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_class("vkeys-usage")
        self.controller = controller or UsageController(url, key)
        self.with_chart = chart
        self._live_setup(self.refresh, interval, w.Layout(width="auto"))
        self.title = w.HTML("<b style='font-size:15px'>My jupyter-vkeys usage</b>")
        self.status = w.HTML()
        self.refresh_button = w.Button(description="refresh", icon="refresh",
                                       layout=w.Layout(width="90px"))
        self.refresh_button.on_click(lambda _: self.refresh())
        self.summary = w.HTML(layout=_auto())
        self.windows = w.HTML(layout=_auto())
        self.key_table = w.HTML(layout=_auto())
        self.recent = w.HTML(layout=_auto())
        self.notebooks = w.HTML(layout=_auto())
        self.cells = w.HTML(layout=_auto())
        self.chart = w.Output()
        self._chart_days: list[dict[str, Any]] | None = None
        self.children = [
            w.HBox([self.title, self.refresh_button, self.live_box, self.status]),
            self.summary, self.windows,
            w.HTML("<b>Keys</b>"), self.key_table,
            w.HBox([w.VBox([w.HTML("<b>Cost per notebook</b>"), self.notebooks],
                           layout=w.Layout(margin="0 24px 0 0")),
                    w.VBox([w.HTML("<b>Cost per cell</b>"), self.cells],
                           layout=w.Layout(margin="0 24px 0 0")), self.chart],
                   layout=w.Layout(flex_flow="row wrap")),
            w.HTML("<b>Recent calls</b>"), self.recent]
        self._watch_views()
        self.refresh()

    def refresh(self) -> None:
        """Ask the gateway again and redraw."""
        self.controller.refresh()
        self.redraw()

    def redraw(self) -> None:
        """Draw the controller's state."""
        ctl = self.controller
        if ctl.problem is not None:
            self.status.value = notice_html("error", ctl.problem.message, ctl.problem.advice)
            if not ctl.me:
                return
        else:
            self.status.value = wrap(f"<span style='opacity:.7;font-size:12px'>refreshed "
                                     f"{when(ctl.refreshed_at)}</span>")
        me = ctl.me
        left = ctl.remaining_usd()
        state = html.escape(str(me.get("state", "?")))
        self.summary.value = wrap(
            f"key <b>{html.escape(str(me.get('id')))}</b> ({html.escape(str(me.get('alias') or ''))}"
            f") · {state} · owner {html.escape(str(me.get('owner') or '-'))} · "
            + (f"<b>{html.escape(usd(left))} left</b> in your tightest window"
               if left is not None else "no budget caps over you"), "vkeys-usage-summary")
        rows = []
        for window in ctl.windows:
            hidden = (" <span style='opacity:.6'>(a shared cap: others' spend not "
                      "shown)</span>") if window.visibility == "limits" else ""
            bar = bar_html(window.bar) if window.visibility == "full" else (
                f"<span style='font-size:12px'>{html.escape(window.bar.period)} cap "
                f"{html.escape(usd(window.bar.cap_usd))}</span>")
            left_text = ("" if window.visibility == "limits" else
                         f"{html.escape(usd(window.bar.remaining_usd))} left, ")
            rows.append(f"<tr><td style='padding:2px 8px'>{html.escape(window.scope)}</td>"
                        f"<td style='padding:2px 8px'>{bar}</td>"
                        f"<td style='padding:2px 8px;font-size:12px'>{left_text}resets "
                        f"{html.escape(resets(window.bar.resets_at))}{hidden}</td></tr>")
        limits = []
        for report in me.get("limits") or []:
            policy = report.get("policy") or {}
            parts = [f"{n} {policy[n]}" for n in ("rpm", "tpm", "max_concurrency")
                     if n in policy]
            if policy.get("models"):
                parts.append("models " + ", ".join(policy["models"]))
            if parts:
                limits.append(f"{report.get('scope')}: " + " · ".join(parts))
        self.windows.value = wrap(
            (f"<table style='border-collapse:collapse'>{''.join(rows)}</table>" if rows else
             "<i>no budget windows</i>")
            + "".join(f"<div style='font-size:12px'>{html.escape(t)}</div>" for t in limits),
            "vkeys-usage-windows")
        self.key_table.value = table_html(
            ["key", "alias", "state", "kind"],
            [(k.get("id"), k.get("alias") or "", k.get("state") or "",
              (k.get("metadata") or {}).get("kind", "")) for k in ctl.keys], "vkeys-usage-keys")
        self.notebooks.value = table_html(
            ["notebook", "calls", "tokens", "cost"],
            [(r["notebook"], r["calls"], f"{r['tokens']:,}", usd(r["cost_usd"]))
             for r in by_notebook(ctl.calls)[:10]], "vkeys-usage-notebooks", "no calls yet")
        self.cells.value = table_html(
            ["notebook", "cell", "calls", "cost"],
            [(r["notebook"], r["cell"], r["calls"], usd(r["cost_usd"]))
             for r in by_cell(ctl.calls)[:10]], "vkeys-usage-cells", "no calls in cells yet")
        self.recent.value = table_html(
            ["when", "model", "status", "tokens in/out", "cost", "notebook", "cell"],
            [(when(c.get("start_time")), c.get("request_model") or "", c.get("status") or "",
              f"{c.get('input_tokens') or 0}/{c.get('output_tokens') or 0}",
              usd(float(c.get("cost_usd") or 0)), c.get("notebook_path") or "",
              "" if c.get("execution_count") is None else f"[{c['execution_count']}]")
             for c in ctl.recent(10)], "vkeys-usage-recent", "no calls yet")
        self._draw_chart(by_day(ctl.calls))

    def _draw_chart(self, days: list[dict[str, Any]]) -> None:
        if not self.with_chart or days == self._chart_days:
            return
        self._chart_days = days
        from .chart import mimebundle, spend_per_day
        self.chart.outputs = ({"output_type": "display_data", "metadata": {},
                               "data": mimebundle(spend_per_day(days))},) if days else ()
