"""Cost per cell: kernels say when a cell starts and ends; the calls of their key in
between belong to that cell.

The IPython extension :mod:`jupyter_vkeys.kernel.cells` (loaded into ipykernel
kernels by the provisioner) posts to ``{prefix}/api/cells`` with the kernel's own
key: ``{"event": "start", "execution_count": 3, "cell_id": "..."}`` before a cell
runs, ``{"event": "end", ...}`` after it. :class:`CellLedger` keeps the open cell
of each key in memory and, at the end, sums the events of that key recorded
since the start (the gateway's in-memory recent events: no disk read, nothing on
the data plane's path). The answer is what the kernel prints under the cell:
calls, tokens, cost, and what is left of the tightest budget window.

Mounted by :class:`~.app.VKeysApp` on the server's routes and on the kernels'
loopback front. Every refusal is an OpenAI-shaped error saying what was wrong.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import orjson

from ..gateway.core import VKeysGateway
from ..gateway.dataplane import DataPlaneHandler, public_endpoint
from ..gateway.errors import ApiError
from ..keys import KeyRecord

MAX_BODY = 4096
MAX_CELL_ID = 256
MAX_OPEN = 10_000  # open cells kept (one per running kernel); the oldest go first


@dataclass
class OpenCell:
    """A cell that started and has not ended yet."""

    started: float
    execution_count: int | None
    cell_id: str


class CellLedger:
    """Open cells by key id, and the sum of a cell's calls when it ends."""

    def __init__(self, gateway: VKeysGateway, clock: Callable[[], float] = time.time) -> None:
        self.gateway = gateway
        self.clock = clock
        self.open: dict[str, OpenCell] = {}

    def start(self, record: KeyRecord, execution_count: int | None, cell_id: str) -> None:
        """A cell of ``record``'s kernel starts now (a previous one left open is replaced)."""
        self.open.pop(record.id, None)
        if len(self.open) >= MAX_OPEN:
            self.open.pop(next(iter(self.open)))
        self.open[record.id] = OpenCell(self.clock(), execution_count, cell_id)

    def end(self, record: KeyRecord, execution_count: int | None, cell_id: str
            ) -> dict[str, Any]:
        """The cell of ``record`` ended: its calls, tokens and cost, and the tightest budget
        window left (None when no budget applies). Unknown cells sum to nothing."""
        cell = self.open.pop(record.id, None)
        summary: dict[str, Any] = {"execution_count": execution_count, "cell_id": cell_id,
                                   "calls": 0, "refused": 0, "input_tokens": 0,
                                   "output_tokens": 0, "cost_usd": 0.0,
                                   "tightest": self.tightest(record)}
        if cell is None:
            return summary
        for event in reversed(self.gateway.sink.events):
            if event.get("start_time", 0) < cell.started:
                break
            if event.get("key_id") != record.id:
                continue
            if str(event.get("status", "")).startswith("refused"):
                summary["refused"] += 1
                continue
            summary["calls"] += 1
            summary["input_tokens"] += int(event.get("input_tokens") or 0)
            summary["output_tokens"] += int(event.get("output_tokens") or 0)
            summary["cost_usd"] += float(event.get("cost_usd") or 0.0)
        return summary

    def tightest(self, record: KeyRecord) -> dict[str, Any] | None:
        """The budget window above ``record`` with the least left, as the kernel shows it."""
        best = None
        for scope in self.gateway.key_report(record).get("limits", []):
            for budget in scope.get("budgets", []):
                if best is None or budget["remaining_usd"] < best["remaining_usd"]:
                    best = {"scope": scope["scope"], "period": budget["period"],
                            "usd": budget["usd"], "remaining_usd": budget["remaining_usd"],
                            "resets_at": budget.get("resets_at")}
        return best


def parse_cell_event(raw: bytes) -> tuple[str, int | None, str]:
    """``(event, execution_count, cell_id)`` of a request body; :class:`ApiError` (400)
    saying which field is wrong."""
    if len(raw) > MAX_BODY:
        raise ApiError(413, "too_large", f"a cell event is at most {MAX_BODY} bytes, "
                                         f"got {len(raw)}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_request", "the body must be JSON: "
                                               '{"event": "start"|"end", ...}') from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object")
    event = body.get("event")
    if event not in ("start", "end"):
        raise ApiError(400, "invalid_request", f"event must be 'start' or 'end', got {event!r}"
                       [:200], param="event")
    count = body.get("execution_count")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool)
                              or not 0 <= count < 2**31):
        raise ApiError(400, "invalid_request", "execution_count must be an integer from 0 "
                       f"to {2**31 - 1} or null", param="execution_count")
    cell_id = body.get("cell_id") or ""
    if not isinstance(cell_id, str) or len(cell_id) > MAX_CELL_ID:
        raise ApiError(400, "invalid_request", f"cell_id must be a string of at most "
                       f"{MAX_CELL_ID} characters", param="cell_id")
    return event, count, cell_id


class CellsHandler(DataPlaneHandler):
    """``POST {prefix}/api/cells`` with a virtual key: a cell of its kernel starts or ends."""

    def initialize(self, gateway: VKeysGateway, ledger: CellLedger) -> None:  # type: ignore[override]
        super().initialize(gateway, dialect="openai")
        self.ledger = ledger

    @public_endpoint
    def post(self) -> None:
        try:
            record = self.authenticate()
            event, count, cell_id = parse_cell_event(self.request.body)
        except ApiError as error:
            self.send_api_error(error)
            return
        if event == "start":
            self.ledger.start(record, count, cell_id)
            self.finish(orjson.dumps({"ok": True}))
        else:
            self.finish(orjson.dumps(self.ledger.end(record, count, cell_id)))


def cell_handlers(prefix: str, gateway: VKeysGateway, ledger: CellLedger) -> list[tuple]:
    """The route of cell events under the gateway's ``prefix``."""
    return [(prefix + "/api/cells", CellsHandler, {"gateway": gateway, "ledger": ledger})]
