"""The admin table as data: one :class:`Row` per user, team, project or key, with its
spend against each cap, and how to filter and sort them.

Built by :class:`~.admin_controller.AdminController` from the admin API's answers
(``GET /keys``, ``GET /policies``, ``GET /keys/{id}``); read by the AdminPanel view.
No HTTP and no widgets here: these functions are tested on plain dicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["KINDS", "PERIODS", "SORTS", "Bar", "Row", "bars_of", "build_rows", "visible_rows"]

KINDS = ("user", "team", "project", "key")
PERIODS = ("day", "week", "month", "total")
SORTS = ("scope", "spend", "share", "state")
_RANK = {"exhausted": 3, "warned": 2, "ok": 1, "none": 0}


@dataclass(frozen=True)
class Bar:
    """Spend of one budget window against its cap."""

    period: str
    cap_usd: float
    spent_usd: float
    held_usd: float
    remaining_usd: float
    soft: float | None
    resets_at: str | None

    @property
    def share(self) -> float:
        """Spent plus held over the cap (1.0 = exhausted)."""
        used = self.spent_usd + self.held_usd
        return used / self.cap_usd if self.cap_usd > 0 else (1.0 if used > 0 else 0.0)

    @property
    def status(self) -> str:
        """``exhausted`` (nothing left), ``warned`` (past the soft threshold) or ``ok``."""
        if self.remaining_usd <= 0 or self.share >= 1:
            return "exhausted"
        if self.soft is not None and self.spent_usd >= self.soft * self.cap_usd:
            return "warned"
        return "ok"


@dataclass
class Row:
    """One line of the admin table."""

    scope: str                       # user:alice, team:ml, project:churn, key:<id>
    kind: str                        # user, team, project, key
    name: str                        # alice, ml, churn, or the key's alias/id
    policy: dict[str, Any] = field(default_factory=dict)
    bars: list[Bar] = field(default_factory=list)
    state: str = "active"            # keys: active, revoked, expired
    key: dict[str, Any] | None = None  # the key's public record (keys only)
    requests_last_minute: int = 0
    in_flight: int = 0

    @property
    def status(self) -> str:
        """The worst of its bars (``none`` without a budget)."""
        return max((b.status for b in self.bars), key=_RANK.__getitem__, default="none")

    @property
    def spend_usd(self) -> float:
        """The spend of its widest window (what sorting by spend sorts by)."""
        return max((b.spent_usd for b in self.bars), default=0.0)

    @property
    def share(self) -> float:
        return max((b.share for b in self.bars), default=0.0)

    def text(self) -> str:
        """What the filter box searches: scope, name, owner, team, project, models."""
        key = self.key or {}
        parts = [self.scope, self.name, self.state, str(key.get("owner") or ""),
                 str(key.get("team") or ""), str(key.get("project") or ""),
                 " ".join(map(str, self.policy.get("models") or []))]
        return " ".join(parts).lower()


def bars_of(report: dict[str, Any]) -> list[Bar]:
    """The bars of one scope report (``engine.report``'s ``budgets``)."""
    out = []
    for b in report.get("budgets") or []:
        out.append(Bar(str(b.get("period")), float(b.get("usd") or 0),
                       float(b.get("spent_usd") or 0), float(b.get("held_usd") or 0),
                       float(b.get("remaining_usd") or 0),
                       float(b["soft"]) if b.get("soft") is not None else None,
                       b.get("resets_at")))
    order = {p: i for i, p in enumerate(PERIODS)}
    return sorted(out, key=lambda bar: order.get(bar.period, 99))


def _key_name(key: dict[str, Any]) -> str:
    return str(key.get("alias") or key.get("id"))


def build_rows(keys: Iterable[dict[str, Any]], policies: Iterable[dict[str, Any]],
               key_reports: dict[str, dict[str, Any]]) -> list[Row]:
    """Rows of every scope with a policy, every user/team/project a key names, and every
    key (with its own bars from ``key_reports[id]``, the ``GET /keys/{id}`` answers)."""
    keys = list(keys)
    reports = {p["scope"]: p for p in policies}
    rows: dict[str, Row] = {}
    for scope, report in reports.items():
        kind, _, name = scope.partition(":")
        if kind not in KINDS or kind == "key":
            continue
        rows[scope] = Row(scope, kind, name, dict(report.get("policy") or {}), bars_of(report),
                          requests_last_minute=int(report.get("requests_last_minute") or 0),
                          in_flight=int(report.get("in_flight") or 0))
    for key in keys:
        for kind, attr in (("user", "owner"), ("team", "team"), ("project", "project")):
            name = key.get(attr)
            if name and f"{kind}:{name}" not in rows:
                rows[f"{kind}:{name}"] = Row(f"{kind}:{name}", kind, str(name))
    for key in keys:
        scope = f"key:{key['id']}"
        report = key_reports.get(key["id"]) or {}
        own = next((r for r in report.get("limits") or [] if r.get("scope") == scope), {})
        rows[scope] = Row(scope, "key", _key_name(key), dict(key.get("policy") or {}),
                          bars_of(own), state=str(key.get("state") or "active"), key=key,
                          requests_last_minute=int(own.get("requests_last_minute") or 0),
                          in_flight=int(own.get("in_flight") or 0))
    return list(rows.values())


def visible_rows(rows: Iterable[Row], *, text: str = "", kinds: Iterable[str] = KINDS,
                 sort: str = "scope", descending: bool = False,
                 show_inactive: bool = False, show_kernel_keys: bool = True) -> list[Row]:
    """The rows the table shows: filtered by ``text`` (every word must match), ``kinds``,
    key state and kernel keys; sorted by ``sort`` (one of :data:`SORTS`)."""
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    words = text.lower().split()
    wanted = set(kinds)
    out = []
    for row in rows:
        if row.kind not in wanted:
            continue
        if row.kind == "key" and not show_inactive and row.state != "active":
            continue
        if (row.kind == "key" and not show_kernel_keys
                and (row.key or {}).get("metadata", {}).get("kind") == "kernel"):
            continue
        haystack = row.text()
        if all(word in haystack for word in words):
            out.append(row)
    keyfunc = {"scope": lambda r: (KINDS.index(r.kind), r.name.lower(), r.scope),
               "spend": lambda r: (r.spend_usd, r.scope),
               "share": lambda r: (r.share, r.scope),
               "state": lambda r: (_RANK[r.status], r.state != "active", r.scope)}[sort]
    return sorted(out, key=keyfunc, reverse=descending)
