"""HTML pieces the views put in ``ipywidgets.HTML``: budget bars, tables, notices.

Everything with money in it sits inside ``class="mathjax_ignore"``: JupyterLab renders
text between two dollar signs as math otherwise. Every value is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from typing import Any

from ..kernel.report import resets, usd
from .rows import Bar

__all__ = ["bar_html", "bars_html", "notice_html", "secret_html", "table_html", "when", "wrap"]

COLOURS = {"ok": "#2e7d32", "warned": "#ef6c00", "exhausted": "#c62828", "none": "#9e9e9e"}
LABELS = {"ok": "ok", "warned": "warned", "exhausted": "exhausted", "none": "no cap"}


def wrap(inner: str, css_class: str = "") -> str:
    """``inner`` in a div that JupyterLab's math renderer leaves alone."""
    return f"<div class='mathjax_ignore {css_class}'>{inner}</div>"


def when(epoch: Any) -> str:
    """An epoch time as ``2026-12-02 05:30 UTC`` (blank for none)."""
    if not isinstance(epoch, (int, float)):
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def status_badge(status: str) -> str:
    colour = COLOURS.get(status, "#9e9e9e")
    return (f"<span class='vkeys-status vkeys-{html.escape(status)}' style='color:{colour};"
            f"font-weight:600'>{html.escape(LABELS.get(status, status))}</span>")


def bar_html(bar: Bar) -> str:
    """One window: a progress bar coloured by state, spent of cap, and when it resets."""
    share = bar.share
    colour = COLOURS[bar.status]
    soft = ""
    if bar.soft is not None:
        soft = (f"<div style='position:absolute;left:{min(bar.soft, 1) * 100:.1f}%;top:0;"
                f"bottom:0;width:1px;background:#555' title='soft threshold "
                f"{bar.soft:.0%}'></div>")
    title = html.escape(f"{bar.period}: {share:.1%} of the cap used; resets "
                        f"{resets(bar.resets_at)}")
    return (f"<div class='vkeys-window vkeys-{bar.status}' data-period='{bar.period}' "
            f"title='{title}' style='display:flex;align-items:center;gap:6px;"
            f"white-space:nowrap;font-size:12px'>"
            f"<span style='width:40px;opacity:.7'>{html.escape(bar.period)}</span>"
            f"<div class='vkeys-bar' style='position:relative;width:110px;height:9px;"
            f"background:#e0e0e0;border-radius:4px;overflow:hidden'>"
            f"<div style='width:{min(share, 1) * 100:.1f}%;height:100%;background:{colour}'>"
            f"</div>{soft}</div>"
            f"<span>{html.escape(usd(bar.spent_usd))} of {html.escape(usd(bar.cap_usd))} "
            f"({share:.0%})</span></div>")


def bars_html(bars: Sequence[Bar]) -> str:
    """Every window of a row (or "no budget")."""
    if not bars:
        return wrap("<span style='opacity:.6;font-size:12px'>no budget</span>")
    return wrap("".join(bar_html(b) for b in bars))


def table_html(headers: Sequence[str], rows: Iterable[Sequence[Any]], css_class: str = "",
               empty: str = "nothing yet") -> str:
    """A small table; cells are escaped text."""
    cell = "padding:2px 8px;text-align:left;white-space:nowrap;font-size:12px"
    body = "".join("<tr>" + "".join(f"<td style='{cell}'>{html.escape(str(v))}</td>"
                                    for v in row) + "</tr>" for row in rows)
    if not body:
        return wrap(f"<span style='opacity:.6'>{html.escape(empty)}</span>", css_class)
    head = "".join(f"<th style='{cell};border-bottom:1px solid #ccc'>{html.escape(h)}</th>"
                   for h in headers)
    return wrap(f"<table style='border-collapse:collapse'><thead><tr>{head}</tr></thead>"
                f"<tbody>{body}</tbody></table>", css_class)


def notice_html(level: str, text: str, advice: str = "") -> str:
    """The outcome of the last action, or an API error with what to do."""
    colour = {"ok": "#2e7d32", "error": "#c62828"}.get(level, "#455a64")
    what = f"<br><b>What to do:</b> {html.escape(advice)}" if advice else ""
    return wrap(f"<div style='border-left:4px solid {colour};padding:4px 8px;"
                f"background:#fafafa'>{html.escape(text)}{what}</div>",
                f"vkeys-notice vkeys-notice-{level}")


def secret_html(key_id: str, secret: str) -> str:
    """A new secret, once, with a copy button (the browser's clipboard; a selection
    copy where the clipboard API is refused)."""
    value = html.escape(secret, quote=True)
    script = ("var b=this,s=b.dataset.secret;function done(){b.textContent='copied'};"
              "if(navigator.clipboard&&window.isSecureContext){navigator.clipboard"
              ".writeText(s).then(done,function(){fallback()})}else{fallback()}"
              "function fallback(){var t=document.createElement('textarea');t.value=s;"
              "document.body.appendChild(t);t.select();document.execCommand('copy');"
              "t.remove();done()}")
    return wrap(f"<div style='border:1px solid #ef6c00;padding:6px;background:#fff8e1'>"
                f"<b>Secret of key {html.escape(key_id)}</b> (shown once: copy it now)<br>"
                f"<code class='vkeys-secret-value' style='user-select:all'>{value}</code> "
                f"<button class='vkeys-copy' data-secret='{value}' "
                f"onclick=\"{html.escape(script, quote=True)}\">copy</button></div>",
                "vkeys-secret")
