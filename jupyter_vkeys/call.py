"""One call attempt as the warehouse records it.

The data plane fills a :class:`Call` as the request goes through
authentication, admission, relay and settlement, and hands
:meth:`Call.event` to the event sink exactly once, answered, refused or failed.
Column names follow the OpenTelemetry GenAI conventions where one exists
(``gen_ai.operation.name`` -> ``operation``, ``gen_ai.provider.name`` ->
``provider``, ``gen_ai.request.model`` -> ``request_model``,
``gen_ai.response.model`` -> ``response_model``, ``gen_ai.usage.input_tokens``
-> ``input_tokens``, ``gen_ai.usage.output_tokens`` -> ``output_tokens``,
``gen_ai.response.finish_reasons`` -> ``finish_reason``).
"""

from __future__ import annotations

import os
import time
import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from .keys import KeyRecord
from .pricing import Cost
from .usage import TOKEN_LIMIT, Usage
from .warehouse.version import SCHEMA_VERSION

INT64_MAX = 2**63 - 1


# Ids only need to be unique, not secret: a seeded PRNG avoids a getrandom() syscall per id,
# which costs more than the rest of the id on a virtual machine.
_ids = random.Random(int.from_bytes(os.urandom(16), "big") ^ os.getpid())


def uuid7() -> str:
    """A time-ordered UUID (version 7): millisecond timestamp, version, variant, random."""
    ms = time.time_ns() // 1_000_000
    value = (ms << 80) | (0x7 << 76) | (_ids.getrandbits(12) << 64) | (0x2 << 62) | \
        _ids.getrandbits(62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def new_request_id() -> str:
    """A request id (``req_`` + 24 hex digits), as sent in ``x-request-id``."""
    return f"req_{_ids.getrandbits(96):024x}"


@dataclass
class Call:
    """The mutable record of one call, owned by its handler."""

    operation: str
    dialect: str
    client: str = ""
    request_id: str = field(default_factory=new_request_id)
    started: float = field(default_factory=time.time)
    first_byte: float | None = None
    ended: float | None = None
    upstream_started: float | None = None
    upstream_headers_at: float | None = None
    record: KeyRecord | None = None
    provider: str = ""
    request_model: str = ""
    response_model: str = ""
    stream: bool = False
    status: str = "ok"
    http_status: int = 200
    error_type: str = ""
    error_message: str = ""
    finish_reason: str = ""
    usage: Usage | None = None
    usage_estimated: bool = False
    cost: Cost | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    prompt_hash: str = ""
    prompt_text: str | None = None
    upstream_wait: float = 0.0  # seconds spent awaiting the upstream (headers and chunks)
    request_sent: bool = False  # the request may have reached the upstream (it may bill it)
    budget_warnings: list[str] = field(default_factory=list)
    tags: dict[str, Any] = field(default_factory=dict)
    cell_id: str = ""  # the notebook cell running when the call arrived (see gateway.cells)
    execution_count: int | None = None
    dry_run_cost: int | None = None  # dry runs: expected and worst-case cost on the real model
    dry_run_worst: int | None = None

    def hold_row(self, hold_pico: int) -> dict[str, Any]:
        """The journal row of an admitted call's budget hold (``status="hold"``).

        If the gateway dies before :meth:`event` is written, recovery turns this row
        into a ``lost`` event charged at the hold."""
        record = self.record
        metadata = record.metadata if record is not None else {}
        return {"schema_version": SCHEMA_VERSION, "event_id": uuid7(),
                "request_id": self.request_id, "start_time": self.started,
                "key_id": record.id, "key_alias": record.alias,
                "parent_key_id": record.parent_id, "user": record.owner, "team": record.team,
                "project": record.project, "kernel_id": str(metadata.get("kernel_id", "")),
                "notebook_path": str(metadata.get("notebook_path", "")), "client": self.client,
                "provider": self.provider, "operation": self.operation,
                "request_model": self.request_model, "stream": self.stream, "status": "hold",
                "cost_pico": min(hold_pico, INT64_MAX), "pricing_status": "hold",
                "request_bytes": self.request_bytes, "prompt_hash": self.prompt_hash}

    def event(self) -> dict[str, Any]:
        """The flat event row (schema :data:`SCHEMA_VERSION`), written once per call."""
        ended = self.ended or time.time()
        record = self.record
        usage = self.usage or Usage()
        cost = self.cost
        upstream_latency = ((self.upstream_headers_at - self.upstream_started)
                            if self.upstream_started and self.upstream_headers_at else None)
        metadata = dict(record.metadata) if record is not None else {}
        return {
            "schema_version": SCHEMA_VERSION,
            "event_id": uuid7(),
            "request_id": self.request_id,
            "start_time": self.started,
            "first_token_time": self.first_byte,
            "end_time": ended,
            "key_id": record.id if record else "",
            "key_alias": record.alias if record else "",
            "parent_key_id": record.parent_id if record else "",
            "user": record.owner if record else "",
            "team": record.team if record else "",
            "project": record.project if record else "",
            "kernel_id": str(metadata.get("kernel_id", "")),
            "notebook_path": str(metadata.get("notebook_path", "")),
            "client": self.client,
            "provider": self.provider,
            "operation": self.operation,
            "request_model": self.request_model,
            "response_model": self.response_model,
            "stream": self.stream,
            "status": self.status,
            "http_status": self.http_status,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "finish_reason": self.finish_reason,
            "input_tokens": usage.input_total,
            "input_uncached_tokens": usage.input_uncached,
            "cache_read_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write,
            "output_tokens": usage.output,
            "reasoning_tokens": usage.reasoning,
            "usage_estimated": self.usage_estimated or usage.clamped,
            "cost_usd": cost.usd if cost and cost.status != "unpriced" else None,
            "cost_pico": min(cost.pico, INT64_MAX) if cost else 0,
            "cost_input_usd": (cost.breakdown.get("input", 0) / 1e12) if cost else None,
            "cost_cache_usd": ((cost.breakdown.get("cache_read", 0)
                                + cost.breakdown.get("cache_write", 0)) / 1e12) if cost else None,
            "cost_output_usd": (cost.breakdown.get("output", 0) / 1e12) if cost else None,
            "price_version": cost.price_version if cost else "",
            "pricing_status": cost.status if cost else "",
            "latency_ms": (ended - self.started) * 1000,
            "ttft_ms": (self.first_byte - self.started) * 1000 if self.first_byte else None,
            "upstream_latency_ms": upstream_latency * 1000 if upstream_latency else None,
            "gateway_overhead_ms": ((ended - self.started - self.upstream_wait) * 1000
                                    if self.upstream_started else None),
            "request_bytes": self.request_bytes,
            "response_bytes": self.response_bytes,
            "prompt_hash": self.prompt_hash,
            "prompt_text": self.prompt_text,
            "budget_warning": "; ".join(self.budget_warnings),
            "tags": orjson.dumps({k: str(v) for k, v in metadata.items()
                                  if k not in ("kernel_id", "notebook_path")} | self.tags
                                 | ({"usage_clamped": f"a class above {TOKEN_LIMIT:,} tokens"}
                                    if usage.clamped else {})).decode(),
            "cell_id": self.cell_id,
            "execution_count": self.execution_count,
            "dry_run_cost_usd": (self.dry_run_cost / 1e12 if self.dry_run_cost is not None
                                 else None),
            "dry_run_worst_usd": (self.dry_run_worst / 1e12 if self.dry_run_worst is not None
                                  else None),
        }

    def minimal_event(self) -> dict[str, Any]:
        """The event's identity, status and cost only: written by the data plane when
        :meth:`event` failed (a bug), so that no call goes unrecorded."""
        record = self.record
        cost = self.cost.pico if self.cost else 0
        return {"schema_version": SCHEMA_VERSION, "event_id": uuid7(),
                "request_id": self.request_id, "start_time": self.started,
                "end_time": self.ended or time.time(),
                "key_id": record.id if record else "", "user": record.owner if record else "",
                "team": record.team if record else "",
                "project": record.project if record else "",
                "parent_key_id": record.parent_id if record else "",
                "operation": self.operation, "provider": self.provider,
                "request_model": self.request_model, "status": self.status,
                "http_status": self.http_status, "error_type": "event_incomplete",
                "cost_pico": min(max(cost, 0), INT64_MAX), "tags": "{}"}
