"""Warehouse throughput and query speed.

1. Events/s through the write path: the gateway's journal append (orjson + one
   ``write`` per event, as on the hot path) and the writer process's journal ->
   Parquet conversion (DuckDB), measured separately; they run in different
   processes, so the sustained rate is the slower of the two.
2. A spend-by-user-by-day query over 10 million simulated events in the real
   layout (hive-partitioned by date, compacted), through ``warehouse.connect()``.

    python benchmarks/warehouse.py [--events 500000] [--rows 10000000]

Targets: >= 100k events/s through journal -> Parquet; <= 1 s for the query.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from jupyter_vkeys import warehouse
from jupyter_vkeys.warehouse.journal import CLOSED_SUFFIX, Journal
from jupyter_vkeys.warehouse.parquet import convert_segment
from jupyter_vkeys.warehouse.schema import EVENTS_SCHEMA


def sample_event(i: int, now: float) -> dict:
    """An event row shaped like the gateway's (all 50 fields)."""
    return {
        "schema_version": 1, "event_id": str(uuid.uuid4()), "request_id": f"req_{i:024x}",
        "start_time": now, "first_token_time": now + 0.2, "end_time": now + 0.9,
        "key_id": f"key{i % 500:09d}", "key_alias": "alias", "parent_key_id": "",
        "user": f"user{i % 200}", "team": f"team{i % 12}", "project": f"proj{i % 40}",
        "kernel_id": "k" * 36, "notebook_path": "projects/churn/model.ipynb",
        "client": "OpenAI/Python 1.99", "provider": "openai", "operation": "chat.completions",
        "request_model": "gpt-4o-mini", "response_model": "gpt-4o-mini-2024-07-18",
        "stream": bool(i % 2), "status": "ok", "http_status": 200, "error_type": "",
        "error_message": "", "finish_reason": "stop", "input_tokens": 812,
        "input_uncached_tokens": 612, "cache_read_tokens": 200, "cache_write_tokens": 0,
        "output_tokens": 231, "reasoning_tokens": 0, "usage_estimated": False,
        "cost_usd": 0.0002403, "cost_pico": 240300000, "cost_input_usd": 0.0000918,
        "cost_cache_usd": 0.000015, "cost_output_usd": 0.0001386,
        "price_version": "genai-prices 0.2.3:gpt-4o-mini", "pricing_status": "priced",
        "latency_ms": 912.4, "ttft_ms": 201.1, "upstream_latency_ms": 199.2,
        "gateway_overhead_ms": 0.41, "request_bytes": 3120, "response_bytes": 1840,
        "prompt_hash": "a1b2c3d4e5f60718", "prompt_text": None, "budget_warning": "",
        "tags": "{}",
    }


def bench_write(n: int, root: Path) -> dict:
    now = time.time()
    events = [sample_event(i, now) for i in range(n)]
    journal = Journal(root / "journal", segment_bytes=1 << 40, fsync_interval=1.0)
    start = time.perf_counter()
    for event in events:
        journal.append("events", event)
    append_s = time.perf_counter() - start
    journal.close()
    [segment] = (root / "journal").glob(f"*{CLOSED_SUFFIX}")
    size = segment.stat().st_size
    start = time.perf_counter()
    rows = convert_segment(segment, root)
    convert_s = time.perf_counter() - start
    assert rows == n
    parquet_bytes = sum(p.stat().st_size for p in (root / "events").rglob("*.parquet"))
    return {"events": n, "append_per_s": n / append_s, "convert_per_s": n / convert_s, "journal_mb": size / 1e6,
            "parquet_mb": parquet_bytes / 1e6, "bytes_per_event_journal": size / n}


def simulate(rows: int, root: Path, days: int = 30) -> float:
    """Write ``rows`` simulated events as compacted daily Parquet files; returns seconds."""
    rng = np.random.default_rng(7)
    start = time.perf_counter()
    per_day = rows // days
    day0 = int(time.time()) // 86400 * 86400 - days * 86400
    for d in range(days):
        n = per_day + (rows - per_day * days if d == days - 1 else 0)
        ts = (day0 + d * 86400 + rng.integers(0, 86400, n)) * 1_000_000
        users = rng.integers(0, 500, n)
        output = rng.integers(1, 2000, n)
        cost_pico = output * 600_000 + rng.integers(0, 1_000_000, n) * 150
        columns = {}
        for field in EVENTS_SCHEMA:
            columns[field.name] = pa.nulls(n, field.type)
        columns["start_time"] = pa.array(ts, pa.int64()).cast(EVENTS_SCHEMA.field("start_time").type)
        columns["user"] = pa.DictionaryArray.from_arrays(
            pa.array(users, pa.int32()), pa.array([f"user{i}" for i in range(500)])
        ).cast(pa.string())
        columns["team"] = pa.DictionaryArray.from_arrays(
            pa.array(users % 12, pa.int32()), pa.array([f"team{i}" for i in range(12)])
        ).cast(pa.string())
        columns["output_tokens"] = pa.array(output, pa.int64())
        columns["cost_pico"] = pa.array(cost_pico, pa.int64())
        columns["cost_usd"] = pa.array(cost_pico / 1e12, pa.float64())
        columns["status"] = pa.array(np.where(rng.random(n) < 0.97, "ok", "refused_budget"))
        table = pa.Table.from_arrays([columns[f.name] for f in EVENTS_SCHEMA],
                                     schema=EVENTS_SCHEMA)
        date = time.strftime("%Y-%m-%d", time.gmtime(day0 + d * 86400))
        folder = root / "events" / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / f"compact-{d:017d}-{d:017d}.parquet",
                       compression="zstd", row_group_size=1 << 20)
    return time.perf_counter() - start


QUERY = ('SELECT "user", date, count(*) AS calls, sum(cost_usd) AS spend_usd FROM events '
         "GROUP BY ALL ORDER BY spend_usd DESC")


def bench_query(root: Path, repeat: int = 5) -> dict:
    timings, first = [], None
    for i in range(repeat):
        start = time.perf_counter()
        con = warehouse.connect(root)
        result = con.execute(QUERY).fetchall()
        elapsed = time.perf_counter() - start
        con.close()
        if i == 0:
            first = elapsed
        timings.append(elapsed)
    return {"groups": len(result), "first_s": first, "median_s": statistics.median(timings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--rows", type=int, default=10_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vkeys-wh-") as tmp:
        write = bench_write(args.events, Path(tmp) / "w")
        print(f"write path ({write['events']:,} events, {write['bytes_per_event_journal']:.0f} "
              f"bytes each in the journal, {write['parquet_mb']:.1f} MB as Parquet):")
        print(f"  journal append (gateway)   {write['append_per_s']:>12,.0f} events/s")
        print(f"  journal -> Parquet (writer){write['convert_per_s']:>12,.0f} events/s")
        sustained = min(write["append_per_s"], write["convert_per_s"])
        print(f"  sustained (two processes)  {sustained:>12,.0f} events/s  (the slower stage; "
              "target >= 100,000)")
        sim_s = simulate(args.rows, Path(tmp) / "q")
        query = bench_query(Path(tmp) / "q")
        print(f"query over {args.rows:,} events (simulated in {sim_s:.1f} s): "
              f"spend by user by day -> {query['groups']:,} groups; first run "
              f"{query['first_s']:.3f} s, median {query['median_s']:.3f} s (target <= 1 s)")
        out = Path(__file__).parent / "results" / "warehouse.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"write": write, "query": query, "rows": args.rows}, indent=2))


if __name__ == "__main__":
    main()
