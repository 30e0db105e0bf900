"""What the bundled notebooks share: open the warehouse (or simulate one when there is
none yet, saying so), pick the period, and show tables formatted as money.

Called from the first cells of ``notebooks/cost_attribution.ipynb``,
``budgets_and_forecast.ipynb``, ``anomaly_detection.ipynb`` and ``finops_export.ipynb``.
HTML with dollar amounts is wrapped in ``class="mathjax_ignore"`` so JupyterLab's MathJax
does not read ``$...$`` as mathematics.
"""

from __future__ import annotations

import html
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Sequence

from . import source
from .findings import money


@dataclass
class Opened:
    """The warehouse a notebook reads and whether it is simulated."""

    root: Path
    simulated: bool
    labels: list[dict[str, Any]]

    def _repr_html_(self) -> str:
        return f'<div class="mathjax_ignore">{self.describe(html_mode=True)}</div>'

    def describe(self, html_mode: bool = False) -> str:
        """The banner shown at the top of every notebook."""
        where = html.escape(str(self.root)) if html_mode else str(self.root)
        if self.simulated:
            text = (f"No warehouse with events was found, so this notebook runs on SIMULATED "
                    f"data written to {where}. Set warehouse in the first cell to a gateway's "
                    "data directory to analyse real calls.")
            return f"<p><b>⚠ Simulated data.</b> {text}</p>" if html_mode else "⚠ " + text
        text = f"Reading the warehouse at {where}."
        return f"<p>{text}</p>" if html_mode else text

    def __repr__(self) -> str:
        return self.describe()


def open_or_simulate(warehouse: str | None, simulate_if_empty: bool = True, *,
                     days: int = 30, users: int = 40, teams: int = 5, seed: int = 0,
                     anomalies: bool = True):
    """``(connection, Opened)`` for ``warehouse`` (None: the gateway's default data
    directory); without events there, a simulated warehouse in a temporary directory."""
    from .simulate import read_labels, simulate

    root = source.resolve(warehouse)
    if source.has_events(root):
        return source.connect(root), Opened(root, False, read_labels(root))
    if not simulate_if_empty:
        raise FileNotFoundError(f"no events under {root} (and simulate_if_empty is False)")
    out = Path(tempfile.mkdtemp(prefix="vkeys-simulated-"))
    sim = simulate(days, users, teams, seed=seed, anomalies=anomalies, out=out)
    return source.connect(out), Opened(out, True, sim.labels)


def period(con, since: str | None, until: str | None, default_days: int = 30
           ) -> tuple[datetime, datetime]:
    """The notebook's period: parameters if given, else the last ``default_days`` days
    up to the last call."""
    from .cli import parse_time
    from .queries import bounds

    lo, hi = bounds(con)
    end = parse_time(until, "until") or (hi or datetime.now(timezone.utc))
    start = parse_time(since, "since") or max(lo or end - timedelta(days=default_days),
                                              end - timedelta(days=default_days))
    return start, end


class Table:
    """A sorted table that renders as HTML (money as ``$1,234.56``, shares as ``12%``)
    inside ``mathjax_ignore``, and as text elsewhere."""

    def __init__(self, frame, money_cols: Sequence[str] = (), pct_cols: Sequence[str] = (),
                 int_cols: Sequence[str] = (), title: str | None = None, limit: int = 25):
        self.frame = frame.head(limit) if hasattr(frame, "head") else frame
        self.money, self.pct, self.ints = set(money_cols), set(pct_cols), set(int_cols)
        self.title = title

    def _cell(self, col: str, value: Any) -> str:
        if value is None:
            return "–"
        if col in self.money:
            return money(float(value))
        if col in self.pct:
            return f"{float(value):.1%}"
        if col in self.ints:
            return f"{int(value):,}"
        if isinstance(value, float):
            return f"{value:,.1f}"
        return str(value)

    def rows(self) -> list[list[str]]:
        """Header then formatted rows."""
        cols = list(self.frame.columns)
        out = [cols]
        for row in self.frame.iter_rows(named=True):
            out.append([self._cell(c, row[c]) for c in cols])
        return out

    def _repr_html_(self) -> str:
        rows = self.rows()
        right = [c in self.money | self.pct | self.ints for c in rows[0]]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(
            f'<td style="text-align:{"right" if r else "left"}">{html.escape(v)}</td>'
            for v, r in zip(row, right)) + "</tr>" for row in rows[1:])
        title = f"<h4>{html.escape(self.title)}</h4>" if self.title else ""
        return (f'<div class="mathjax_ignore">{title}<table><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>")

    def __repr__(self) -> str:
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
        return "\n".join(([self.title] if self.title else []) + lines)


def note(text: str):
    """A paragraph of text (money in it kept from MathJax)."""
    from IPython.display import HTML

    return HTML(f'<div class="mathjax_ignore"><p>{html.escape(text)}</p></div>')
