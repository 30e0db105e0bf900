"""Cost per cell: which notebook cell a kernel key's calls belong to, and its tally.

The IPython extension in each kernel (:mod:`jupyter_vkeys.cellcost`) tells the
gateway, with the kernel's own virtual key, when a cell execution starts and ends
(``POST {prefix}/api/cells``). Between the two, every call made with that key
belongs to that cell: :class:`~.proxy.ProxyCall` asks :meth:`CellTracker.current`
(one dict lookup) and stamps the call's event with the cell id and execution
count, then adds the finished call to the cell's :class:`CellRun`. At the end the
extension gets the cell's summary back and prints one quiet line under the output.

A cell started with ``dry_run`` turns every call of that key into a dry run (see
:mod:`.dry_run`) until the cell ends. Kept in memory only, bounded: a key has at
most one open cell, and runs older than a day are dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..call import Call
    from .dry_run import Estimate

MAX_OPEN_RUNS = 50_000
MAX_RUN_AGE = 24 * 3600.0
MAX_ESTIMATES = 1000  # dry-run calls itemised per cell (the rest are counted)
_REFUSED = ("refused_budget", "refused_rate", "refused_model", "refused_key")


@dataclass
class CellRun:
    """One cell execution of one key: what its calls spent, or would have."""

    key_id: str
    cell_id: str
    execution_count: int | None
    dry_run: bool
    started: float
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_pico: int = 0
    refused: int = 0
    failed: int = 0
    estimates: list["Estimate"] = field(default_factory=list)

    def add(self, call: "Call") -> None:
        """Count one finished call (called by the data plane when the call concludes)."""
        self.calls += 1
        if call.usage is not None:
            self.input_tokens += call.usage.input_total
            self.output_tokens += call.usage.output
        if call.cost is not None:
            self.cost_pico += max(call.cost.pico, 0)
        if call.status in _REFUSED:
            self.refused += 1
        elif call.status not in ("ok", "dry_run"):
            self.failed += 1

    def add_estimate(self, estimate: "Estimate") -> None:
        """Keep a dry-run call's figures for the cell's report."""
        if len(self.estimates) < MAX_ESTIMATES:
            self.estimates.append(estimate)

    def summary(self) -> dict[str, Any]:
        """The cell's report: calls, tokens, cost; for a dry run, per model what the real
        calls would have cost and whether the key's limits allow them."""
        out: dict[str, Any] = {
            "cell_id": self.cell_id, "execution_count": self.execution_count,
            "dry_run": self.dry_run, "calls": self.calls, "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens, "cost_usd": self.cost_pico / 1e12,
            "refused": self.refused, "failed": self.failed,
            "seconds": round(time.time() - self.started, 3)}
        if self.dry_run:
            out["models"] = _by_model(self.estimates)
            out["calls_itemised"] = [e.as_dict() for e in self.estimates[:50]]
        return out


def _by_model(estimates: list["Estimate"]) -> list[dict[str, Any]]:
    """Dry-run estimates grouped by model: calls, input tokens, worst and expected USD."""
    groups: dict[str, dict[str, Any]] = {}
    for e in estimates:
        row = groups.setdefault(e.model, {
            "model": e.model, "calls": 0, "input_tokens": 0, "worst_usd": 0.0,
            "expected_usd": 0.0, "priced": True, "allowed": True, "verdicts": [],
            "typical_output_tokens": e.typical_output, "typical_output_source": e.typical_source})
        row["calls"] += 1
        row["input_tokens"] += e.input_tokens
        if e.worst_pico is None or e.expected_pico is None:
            row["priced"] = False
        else:
            row["worst_usd"] += e.worst_pico / 1e12
            row["expected_usd"] += e.expected_pico / 1e12
        if e.verdict:
            row["allowed"] = False
            if e.verdict not in row["verdicts"] and len(row["verdicts"]) < 3:
                row["verdicts"].append(e.verdict)
    for row in groups.values():
        if not row["priced"]:
            row["worst_usd"] = row["expected_usd"] = None
    return sorted(groups.values(), key=lambda r: -(r["expected_usd"] or 0))


class CellTracker:
    """The open cell of every kernel key (see the module docstring)."""

    def __init__(self) -> None:
        self.open: dict[str, CellRun] = {}

    def start(self, key_id: str, cell_id: str, execution_count: int | None, dry_run: bool,
              now: float | None = None) -> CellRun:
        """A cell began on ``key_id``'s kernel; replaces a run that never ended (a kernel
        interrupted between its hooks)."""
        now = time.time() if now is None else now
        if len(self.open) >= MAX_OPEN_RUNS:
            for key, run in list(self.open.items()):
                if now - run.started > MAX_RUN_AGE:
                    del self.open[key]
            if len(self.open) >= MAX_OPEN_RUNS:
                self.open.pop(next(iter(self.open)))
        run = self.open[key_id] = CellRun(key_id, cell_id, execution_count, dry_run, now)
        return run

    def current(self, key_id: str) -> CellRun | None:
        """The cell open on ``key_id`` (hot path: one lookup; None when none is open)."""
        return self.open.get(key_id)

    def end(self, key_id: str) -> CellRun | None:
        """Close and return the key's open cell (None if none was open)."""
        return self.open.pop(key_id, None)
