"""Routes a kernel's own key opens for cost per cell and dry runs (no admin credential).

- ``POST {prefix}/api/cells`` ``{"action": "start", "cell_id": "...", "execution_count": 3,
  "dry_run": false}`` opens the key's cell; ``{"action": "end"}`` closes it and answers
  the cell's summary, with what is left of the caller's tightest budget window.
  Called by the IPython extension :mod:`jupyter_vkeys.cellcost` around every cell.
- ``POST {prefix}/api/estimate`` ``{"operation": "chat.completions", "body": {...}}``
  prices one call without making it (``jupyter_vkeys.estimate``).

Both authenticate with the virtual key alone, as the data plane does, and answer
OpenAI-shaped errors; both are mounted on the kernels' loopback front too.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..dialects import OPERATIONS
from ..keys import KeyRecord
from .dataplane import DataPlaneHandler, public_endpoint
from .dry_run import estimate
from .errors import ApiError

MAX_CELL_ID = 256


def _bad(message: str, param: str) -> ApiError:
    return ApiError(400, "invalid_request", message, param=param)


def _body(handler: DataPlaneHandler) -> dict[str, Any]:
    try:
        body = orjson.loads(handler.request.body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise _bad(f"request body is not valid JSON: {exc}", "body") from None
    if not isinstance(body, dict):
        raise _bad("request body must be a JSON object", "body")
    return body


def tightest_budget(gateway, record: KeyRecord) -> dict[str, Any] | None:
    """The caller's budget window with the least left (key, parent key, own user scope):
    scope, period, cap, remaining and reset time; None when no budget applies."""
    best = None
    for limit in gateway.control.me(record)["limits"]:
        if limit.get("visibility") != "full":
            continue
        for budget in limit["budgets"]:
            if best is None or budget["remaining_usd"] < best["remaining_usd"]:
                best = {"scope": limit["scope"], "period": budget["period"],
                        "cap_usd": budget["usd"], "remaining_usd": budget["remaining_usd"],
                        "resets_at": budget.get("resets_at")}
    return best


class CellsHandler(DataPlaneHandler):
    """``POST /api/cells``: a kernel's cell starts or ends (see the module docstring)."""

    @public_endpoint
    def post(self) -> None:
        try:
            record = self.authenticate()
            body = _body(self)
            action = body.get("action")
            tracker = self.gateway.cells
            if action == "start":
                cell_id = body.get("cell_id") or ""
                count = body.get("execution_count")
                if not isinstance(cell_id, str) or len(cell_id) > MAX_CELL_ID:
                    raise _bad(f"'cell_id' must be a string of at most {MAX_CELL_ID} "
                               "characters", "cell_id")
                if count is not None and (isinstance(count, bool) or not isinstance(count, int)
                                          or not 0 <= count < 2**62):
                    raise _bad("'execution_count' must be a non-negative integer",
                               "execution_count")
                dry = body.get("dry_run", False)
                if not isinstance(dry, bool):
                    raise _bad("'dry_run' must be true or false", "dry_run")
                run = tracker.start(record.id, cell_id, count, dry)
                self.finish(orjson.dumps({"started": True, "cell_id": run.cell_id,
                                          "execution_count": run.execution_count,
                                          "dry_run": run.dry_run}))
            elif action == "end":
                run = tracker.end(record.id)
                summary = run.summary() if run is not None else {"calls": 0, "open": False}
                summary["tightest_budget"] = tightest_budget(self.gateway, record)
                self.finish(orjson.dumps(summary))
            else:
                raise _bad("'action' must be 'start' or 'end'", "action")
        except ApiError as error:
            self.send_api_error(error)


class EstimateHandler(DataPlaneHandler):
    """``POST /api/estimate``: what one call would cost, without making it."""

    @public_endpoint
    def post(self) -> None:
        try:
            record = self.authenticate()
            body = _body(self)
            operation = body.get("operation", "chat.completions")
            if operation not in OPERATIONS:
                raise _bad(f"'operation' must be one of {', '.join(OPERATIONS)}", "operation")
            call = body.get("body")
            if not isinstance(call, dict) or not isinstance(call.get("model"), str):
                raise _bad("'body' must be the call's JSON body, with its 'model'", "body")
            try:
                size = len(orjson.dumps(call))
            except orjson.JSONEncodeError:
                raise _bad("'body' nests JSON deeper than 255 levels", "body") from None
            figures = estimate(self.gateway, record, operation, call, size).as_dict()
            figures["tightest_budget"] = tightest_budget(self.gateway, record)
            self.finish(orjson.dumps(figures))
        except ApiError as error:
            self.send_api_error(error)


def cell_handlers(prefix: str, gateway) -> list[tuple]:
    """The two routes, for :func:`.app.key_handlers` (both hosts and the kernels' front)."""
    init = {"gateway": gateway, "dialect": "openai"}
    return [(prefix + "/api/cells", CellsHandler, init),
            (prefix + "/api/estimate", EstimateHandler, init)]
