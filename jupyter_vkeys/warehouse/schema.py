"""The warehouse's datasets: one row per call attempt (``events``) and per admin action
(``audit``), with typed, versioned Arrow schemas.

The journal stores rows as JSON lines with epoch-second floats; Parquet files
store the typed columns below plus the ``date`` hive partition (UTC day of
``start_time``). Field names follow the OpenTelemetry GenAI semantic
conventions where one exists (see :mod:`jupyter_vkeys.call`).
"""

from __future__ import annotations

import pyarrow as pa

from .version import SCHEMA_VERSION
TS = pa.timestamp("us", tz="UTC")

# (name, arrow type in Parquet, description); timestamps arrive as epoch floats.
EVENT_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("schema_version", pa.int16(), "version of this schema"),
    ("event_id", pa.string(), "time-ordered UUIDv7 of the row"),
    ("request_id", pa.string(), "the gateway's request id (x-request-id)"),
    ("start_time", TS, "when the gateway received the request (UTC)"),
    ("first_token_time", TS, "when the first response byte went to the client"),
    ("end_time", TS, "when the call ended"),
    ("key_id", pa.string(), "virtual key id (never the secret)"),
    ("key_alias", pa.string(), "the key's alias"),
    ("parent_key_id", pa.string(), "parent of a child (per-kernel) key"),
    ("user", pa.string(), "owner of the key"),
    ("team", pa.string(), "team of the key"),
    ("project", pa.string(), "project of the key"),
    ("kernel_id", pa.string(), "Jupyter kernel id (per-kernel keys)"),
    ("notebook_path", pa.string(), "notebook path, or its hash when configured"),
    ("client", pa.string(), "User-Agent of the caller"),
    ("provider", pa.string(), "gen_ai.provider.name: provider that served it"),
    ("operation", pa.string(), "gen_ai.operation.name: chat.completions, messages, ..."),
    ("request_model", pa.string(), "gen_ai.request.model: as the client asked"),
    ("response_model", pa.string(), "gen_ai.response.model: as the upstream answered"),
    ("stream", pa.bool_(), "streamed response"),
    ("status", pa.string(), "ok, error, refused_budget, refused_rate, refused_model, "
                            "refused_key, cancelled, upstream_error, timeout, lost, dry_run"),
    ("http_status", pa.int16(), "HTTP status sent to the client (499: client went away)"),
    ("error_type", pa.string(), "error class when not ok"),
    ("error_message", pa.string(), "error text when not ok (never secrets)"),
    ("finish_reason", pa.string(), "gen_ai.response.finish_reasons (first choice)"),
    ("input_tokens", pa.int64(), "gen_ai.usage.input_tokens: all input, cached or not"),
    ("input_uncached_tokens", pa.int64(), "input billed at the plain input price"),
    ("cache_read_tokens", pa.int64(), "input read from the prompt cache"),
    ("cache_write_tokens", pa.int64(), "input written to the prompt cache"),
    ("output_tokens", pa.int64(), "gen_ai.usage.output_tokens (includes reasoning)"),
    ("reasoning_tokens", pa.int64(), "reasoning tokens inside output_tokens"),
    ("usage_estimated", pa.bool_(), "usage estimated (stream cut before usage arrived)"),
    ("cost_usd", pa.float64(), "cost in USD; null when the model has no price"),
    ("cost_pico", pa.int64(), "cost in pico-USD (exact; what budgets sum)"),
    ("cost_input_usd", pa.float64(), "part of cost for uncached input"),
    ("cost_cache_usd", pa.float64(), "part of cost for cache reads and writes"),
    ("cost_output_usd", pa.float64(), "part of cost for output"),
    ("price_version", pa.string(), "price data the cost used"),
    ("pricing_status", pa.string(), "priced, fallback, unpriced, hold"),
    ("latency_ms", pa.float64(), "total time in the gateway"),
    ("ttft_ms", pa.float64(), "time to first byte to the client"),
    ("upstream_latency_ms", pa.float64(), "time until the upstream's headers"),
    ("gateway_overhead_ms", pa.float64(), "latency minus time spent waiting on the upstream"),
    ("request_bytes", pa.int64(), "request body size"),
    ("response_bytes", pa.int64(), "response body size"),
    ("prompt_hash", pa.string(), "hash of the normalized prompt (loop detection)"),
    ("prompt_text", pa.string(), "the prompt, only with content logging on"),
    ("budget_warning", pa.string(), "soft thresholds reached by this call"),
    ("tags", pa.string(), "free metadata as a JSON object"),
    # -- version 2 --
    ("cell_id", pa.string(), "the notebook cell (frontend cell id) whose execution made the call"),
    ("execution_count", pa.int64(), "the kernel's execution count of that cell"),
    ("dry_run_cost_usd", pa.float64(), "dry runs: expected cost on the real model (typical "
                                       "output length)"),
    ("dry_run_worst_usd", pa.float64(), "dry runs: worst case on the real model (at max tokens)"),
]

AUDIT_FIELDS: list[tuple[str, pa.DataType, str]] = [
    ("schema_version", pa.int16(), "version of this schema"),
    ("seq", pa.int64(), "sequence number in the registry's audit table"),
    ("ts", TS, "when the action happened"),
    ("actor", pa.string(), "who acted (admin token, Jupyter user, cli:user)"),
    ("action", pa.string(), "key.create, key.update, key.revoke, key.rotate, policy.set, ..."),
    ("target", pa.string(), "key:<id> or a scope"),
    ("before", pa.string(), "JSON of the object before (no secrets)"),
    ("after", pa.string(), "JSON of the object after (no secrets)"),
]

TIME_COLUMNS = {"events": ("start_time", "first_token_time", "end_time"), "audit": ("ts",)}
PARTITION_TIME = {"events": "start_time", "audit": "ts"}


def _schema(fields: list[tuple[str, pa.DataType, str]]) -> pa.Schema:
    return pa.schema([pa.field(n, t, metadata={"description": d}) for n, t, d in fields],
                     metadata={"schema_version": str(SCHEMA_VERSION)})


EVENTS_SCHEMA = _schema(EVENT_FIELDS)
AUDIT_SCHEMA = _schema(AUDIT_FIELDS)
SCHEMAS = {"events": EVENTS_SCHEMA, "audit": AUDIT_SCHEMA}


def journal_schema(dataset: str) -> pa.Schema:
    """The schema of a dataset as JSON lines carry it: timestamps as float64 seconds."""
    times = TIME_COLUMNS[dataset]
    return pa.schema([pa.field(f.name, pa.float64() if f.name in times else f.type)
                      for f in SCHEMAS[dataset]])
