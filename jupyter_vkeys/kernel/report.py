"""A ``/api/me`` report that renders itself: rich HTML in JupyterLab, plain text elsewhere.

:class:`UsageReport` is what :func:`jupyter_vkeys.me` returns. It is the report's
dict (so code can read ``report["limits"]``), with ``_repr_html_`` for frontends
that render HTML and ``__repr__`` for terminals, logs and ``print``. The HTML is
wrapped in ``class="mathjax_ignore"``: JupyterLab renders text between two dollar
signs as math, which would garble two amounts in one output.
"""

from __future__ import annotations

import html
import time
from datetime import datetime, timezone
from typing import Any

BAR_COLOURS = (("#2e7d32", 0.8), ("#ef6c00", 1.0))  # green below 80 %, orange below 100 %
FULL_COLOUR = "#c62828"


def usd(value: float) -> str:
    """Money as people read it: cents for amounts of a dollar or more, else 4 decimals."""
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.4f}" if value == 0 or abs(value) >= 0.0001 else f"${value:.6f}"


def resets(when: str | None, now: float | None = None) -> str:
    """``"in 3 days (2027-01-01 00:00 UTC)"`` for an RFC 3339 time; ``"never"`` for None."""
    if not when:
        return "never"
    try:
        moment = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        return when
    left = moment.timestamp() - (time.time() if now is None else now)
    if left <= 0:
        relative = "now"
    elif left < 3600:
        relative = f"in {max(int(left // 60), 1)} min"
    elif left < 2 * 86400:
        relative = f"in {int(left // 3600)} h {int(left % 3600 // 60)} min"
    else:
        relative = f"in {int(left // 86400)} days"
    stamp = moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{relative} ({stamp})"


def _share(budget: dict[str, Any]) -> float:
    cap = float(budget.get("usd") or 0)
    used = float(budget.get("spent_usd") or 0) + float(budget.get("held_usd") or 0)
    return used / cap if cap > 0 else (1.0 if used > 0 else 0.0)


def _rates(policy: dict[str, Any]) -> list[str]:
    parts = []
    if policy.get("models"):
        parts.append("models " + ", ".join(map(str, policy["models"])))
    for name in ("rpm", "tpm", "max_concurrency"):
        if name in policy:
            parts.append(f"{name} {policy[name]}")
    return parts


def _heading(report: dict[str, Any]) -> tuple[str, str]:
    meta = report.get("metadata") or {}
    title = f"key {report.get('id', '?')} ({report.get('alias') or 'no alias'})"
    where = ""
    if meta.get("notebook_path") or meta.get("kernel_id"):
        where = (f"notebook {meta.get('notebook_path') or '-'}, "
                 f"kernel {str(meta.get('kernel_id', ''))[:8]}")
    return title, where


def _reset_cell(when: str | None, now: float | None) -> str:
    """``resets in 30 days``, with the exact time as its tooltip."""
    text = resets(when, now)
    relative, _, stamp = text.partition(" (")
    if not stamp:
        return f"resets {html.escape(text)}"
    return (f"<span class='vkeys-reset' title='{html.escape(stamp.rstrip(')'))}'>resets "
            f"{html.escape(relative)}</span>")


def _label(scope: str, report: dict[str, Any]) -> str:
    """HTML label of a scope: what it is for a person, the scope name in grey."""
    kind, _, name = scope.partition(":")
    if scope == f"key:{report.get('id')}":
        what = "this key"
    elif scope == f"key:{report.get('parent_id')}":
        what = "parent key"
    else:
        what = {"user": "user", "team": "team", "project": "project", "key": "key",
                "global": "everyone"}.get(kind, kind)
        what = f"{what} {name}" if name and kind != "key" else what
    return (f"{html.escape(what)} <span style='opacity:.6;font-size:11px'>"
            f"{html.escape(scope)}</span>")


class UsageReport(dict):
    """This kernel's key, its limits on every scope above it, spend and reset times."""

    def text(self, now: float | None = None) -> str:
        """The plain-text rendering (also ``repr``)."""
        title, where = _heading(self)
        lines = [f"{title}, {self.get('state', '?')}"]
        if where:
            lines.append(where)
        for scope in self.get("limits") or []:
            parts = _rates(scope.get("policy") or {})
            for b in scope.get("budgets") or []:
                parts.append(f"{b.get('period')} budget {usd(b.get('usd') or 0)}: spent "
                             f"{usd(b.get('spent_usd') or 0)} ({_share(b):.0%}), remaining "
                             f"{usd(b.get('remaining_usd') or 0)}, resets "
                             f"{resets(b.get('resets_at'), now)}")
            lines.append(f"  {scope.get('scope')}: " + ("; ".join(parts) or "no limits"))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.text()

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """IPython's plain-text display (a terminal, a frontend without HTML)."""
        printer.text(self.text())

    def _repr_html_(self, now: float | None = None) -> str:
        """JupyterLab's rendering: one table row per budget, spend as a bar."""
        esc = html.escape
        title, where = _heading(self)
        state = str(self.get("state", "?"))
        colour = "#2e7d32" if state == "active" else FULL_COLOUR
        rows = []
        for scope in self.get("limits") or []:
            name = _label(str(scope.get("scope", "")), self)
            rates = esc(" · ".join(_rates(scope.get("policy") or {})))
            budgets = scope.get("budgets") or []
            if not budgets:
                rows.append(f"<tr><td>{name}</td><td colspan='4'>{rates or 'no limits'}</td></tr>")
            for b in budgets:
                share = _share(b)
                bar = next((c for c, limit in BAR_COLOURS if share < limit), FULL_COLOUR)
                width = min(share, 1.0) * 100
                rows.append(
                    f"<tr><td>{name}</td>"
                    f"<td>{esc(usd(b.get('usd') or 0))} / {esc(str(b.get('period')))}</td>"
                    f"<td><div class='vkeys-bar' title='{share:.1%}' style='width:120px;"
                    f"height:10px;background:#e0e0e0;border-radius:5px;overflow:hidden'>"
                    f"<div style='width:{width:.1f}%;height:100%;background:{bar}'></div></div>"
                    f"</td><td>spent {esc(usd(b.get('spent_usd') or 0))} ({share:.0%}), left "
                    f"{esc(usd(b.get('remaining_usd') or 0))}</td>"
                    f"<td>{_reset_cell(b.get('resets_at'), now)}</td></tr>")
                if rates:
                    rows.append(f"<tr><td></td><td colspan='4'>{rates}</td></tr>")
        cell = "padding:2px 8px;text-align:left;white-space:nowrap"
        table = (f"<table style='border-collapse:collapse'><tbody>{''.join(rows)}</tbody>"
                 f"</table>").replace("<td", f"<td style='{cell}'")
        return (f"<div class='mathjax_ignore vkeys-report' style='font-size:13px'>"
                f"<div><b>{esc(title)}</b> <span style='color:{colour}'>{esc(state)}</span>"
                + (f"<br><span style='opacity:.75'>{esc(where)}</span>" if where else "")
                + f"</div>{table}</div>")
