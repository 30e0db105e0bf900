"""The one record every detector returns, and how it is printed.

A :class:`Finding` is what a person acts on: which detector, which entity (key, user,
team, project), when (ISO 8601 UTC), actual against expected with its band, a score,
the impact in USD, the root cause (which dimension and value drove it, with its share)
and one sentence. Built by :mod:`.detectors`; printed by ``jupyter vkeys anomalies``
(:func:`render_table`, or JSON via :meth:`Finding.as_dict`) and shown by the
``anomaly_detection`` notebook.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any


def iso(t: datetime | float | int) -> str:
    """ISO 8601 UTC with a ``Z`` (epoch seconds or an aware datetime)."""
    if not isinstance(t, datetime):
        t = datetime.fromtimestamp(float(t), timezone.utc)
    return t.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class Cause:
    """One driver of a finding: ``dimension`` (model, notebook, cell, prompt, client,
    status), its ``value`` and ``contribution`` (share of the excess it explains, 0..1)."""

    dimension: str
    value: str | None
    contribution: float


@dataclass
class Finding:
    """One anomaly. ``actual``/``expected``/``lower``/``upper`` are in the detector's
    unit (USD for spend, calls for loops, a rate for errors); ``impact_usd`` is always
    USD (money spent beyond expectation, or at risk)."""

    detector: str
    entity: dict[str, str | None]
    start: str
    end: str
    actual: float
    expected: float
    lower: float
    upper: float
    score: float
    impact_usd: float
    root_cause: list[Cause] = field(default_factory=list)
    explanation: str = ""
    unit: str = "usd"

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape (``--json``): plain types, root causes as mappings."""
        out = asdict(self)
        for k in ("actual", "expected", "lower", "upper", "score", "impact_usd"):
            out[k] = round(float(out[k]), 6)
        for c in out["root_cause"]:
            c["contribution"] = round(float(c["contribution"]), 4)
        return out


def money(x: float | None) -> str:
    """``$1,234.56`` (cents below $100k; ``$0.0042`` style for sub-cent amounts)."""
    if x is None:
        return "-"
    if abs(x) < 0.01 and x != 0:
        return f"${x:,.4f}"
    return f"${x:,.2f}"


def value_text(x: float, unit: str) -> str:
    """A value in its unit for tables and sentences."""
    if unit == "usd":
        return money(x)
    if unit == "rate":
        return f"{x:.0%}"
    return f"{x:,.0f}"


def render_table(findings: list[Finding]) -> str:
    """A readable fixed-width table, most impactful first, then each explanation."""
    if not findings:
        return "no findings"
    rows = [("detector", "entity", "start", "end", "actual", "expected", "impact", "score")]
    for f in findings:
        who = f.entity.get("user") or f.entity.get("key_id") or "-"
        key = f.entity.get("key_id") or ""
        rows.append((f.detector, f"{who} ({key})" if key and key != who else who,
                     f.start, f.end, value_text(f.actual, f.unit), value_text(f.expected, f.unit),
                     money(f.impact_usd), f"{f.score:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {4, 5, 6, 7}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w)
                       for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    lines += [f"{i}. {f.explanation}" for i, f in enumerate(findings, 1)]
    return "\n".join(lines)
