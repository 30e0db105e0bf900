"""Attribution: who spent what, on which model, notebook and cell, over a period.

Called by the ``cost_attribution`` notebook, the FOCUS export and the benchmarks, on a
connection from :func:`.source.connect` (the ``ev`` view). Every function returns a
Polars DataFrame (``.to_pandas()`` for pandas), aggregated in DuckDB so the frames stay
small whatever the warehouse size. Periods are half-open ``[since, until)`` in UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Sequence

#: dimension name -> SQL expression over ``ev``
DIMENSIONS: dict[str, str] = {
    "user": '"user"', "team": "team", "project": "project", "notebook": "notebook_path",
    "cell": "cell_id", "key": "key_id", "entity_key": "entity_key", "model": "model",
    "provider": "provider", "status": "status", "client": "client",
    "day": "day", "hour": "hour", "week": "CAST(date_trunc('week', start_time) AS DATE)",
}

#: measure name -> SQL aggregate over ``ev``
MEASURES: dict[str, str] = {
    "spend_usd": "coalesce(sum(cost_usd), 0)",
    "calls": "count(*)",
    "input_uncached_tokens": "CAST(coalesce(sum(input_uncached_tokens), 0) AS BIGINT)",
    "cache_read_tokens": "CAST(coalesce(sum(cache_read_tokens), 0) AS BIGINT)",
    "cache_write_tokens": "CAST(coalesce(sum(cache_write_tokens), 0) AS BIGINT)",
    "output_tokens": "CAST(coalesce(sum(output_tokens), 0) AS BIGINT)",
    "reasoning_tokens": "CAST(coalesce(sum(reasoning_tokens), 0) AS BIGINT)",
    "latency_p50_ms": "quantile_cont(latency_ms, 0.5) FILTER (status = 'ok')",
    "latency_p95_ms": "quantile_cont(latency_ms, 0.95) FILTER (status = 'ok')",
    "error_rate": "avg(CAST(is_error AS DOUBLE))",
    "refusal_rate": "avg(CAST(is_refusal AS DOUBLE))",
}
FAST_MEASURES = ("spend_usd", "calls", "input_uncached_tokens", "cache_read_tokens",
                 "cache_write_tokens", "output_tokens", "reasoning_tokens", "error_rate",
                 "refusal_rate")


def to_frame(con, sql: str, params: Sequence[Any] = ()):
    """Run ``sql`` with ``params`` and return a Polars DataFrame (via Arrow)."""
    return con.sql(sql, params=list(params)).pl() if params else con.sql(sql).pl()


def _dims(by: str | Sequence[str]) -> list[str]:
    names = [b.strip() for b in (by.split(",") if isinstance(by, str) else by) if b.strip()]
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension(s) {', '.join(unknown)}; choose from "
                         + ", ".join(DIMENSIONS))
    return names


def period_filter(since: datetime | None, until: datetime | None) -> tuple[str, list[Any]]:
    """A WHERE clause (and its parameters) for ``[since, until)`` on ``start_time``."""
    clauses, params = [], []
    if since is not None:
        clauses.append("start_time >= ?")
        params.append(since)
    if until is not None:
        clauses.append("start_time < ?")
        params.append(until)
    return (" AND ".join(clauses) or "TRUE"), params


def attribution(con, by: str | Sequence[str] = "user", since: datetime | None = None,
                until: datetime | None = None, measures: Sequence[str] | None = None,
                where: str | None = None, order: str = "spend_usd"):
    """Spend, calls, tokens by class, latency p50/p95, error and refusal rates by the
    dimensions ``by`` (any of :data:`DIMENSIONS`), over ``[since, until)``, sorted by
    ``order`` descending. ``where`` is an extra SQL condition over ``ev``."""
    dims = _dims(by)
    names = list(measures or MEASURES)
    for m in names:
        if m not in MEASURES:
            raise ValueError(f"unknown measure {m!r}; choose from {', '.join(MEASURES)}")
    cond, params = period_filter(since, until)
    if where:
        cond = f"({cond}) AND ({where})"
    select = [f"{DIMENSIONS[d]} AS \"{d}\"" for d in dims] + [
        f"{MEASURES[m]} AS {m}" for m in names]
    group = f"GROUP BY {', '.join(str(i + 1) for i in range(len(dims)))}" if dims else ""
    sort = f"ORDER BY {order} DESC NULLS LAST" if order in names else ""
    sql = f"SELECT {', '.join(select)} FROM ev WHERE {cond} {group} {sort}"
    return to_frame(con, sql, params)


def top_spenders(con, by: str = "user", since: datetime | None = None,
                 until: datetime | None = None, n: int = 10):
    """The ``n`` largest spenders of dimension ``by`` with their share of total spend."""
    import polars as pl

    frame = attribution(con, by, since, until, measures=("spend_usd", "calls"))
    total = frame["spend_usd"].sum() or 1.0
    return frame.head(n).with_columns((pl.col("spend_usd") / total).alias("share"))


def movers(con, by: str = "user", since: datetime | None = None,
           until: datetime | None = None, n: int = 10):
    """Biggest changes in spend of ``by`` between ``[since, until)`` and the period of the
    same length just before it: ``spend_usd``, ``previous_usd``, ``change_usd``,
    ``change_pct`` (null when there was no previous spend), sorted by |change|."""
    if since is None or until is None:
        raise ValueError("movers needs both since and until (the period to compare)")
    dim = _dims(by)[0]
    prev = since - (until - since)
    expr = DIMENSIONS[dim]
    sql = f"""
        SELECT {expr} AS "{dim}",
               coalesce(sum(cost_usd) FILTER (start_time >= ?), 0) AS spend_usd,
               coalesce(sum(cost_usd) FILTER (start_time < ?), 0) AS previous_usd
        FROM ev WHERE start_time >= ? AND start_time < ? GROUP BY 1"""
    import polars as pl

    frame = to_frame(con, sql, [since, since, prev, until])
    return (frame.with_columns((pl.col("spend_usd") - pl.col("previous_usd")).alias("change_usd"))
            .with_columns(pl.when(pl.col("previous_usd") > 0)
                          .then(pl.col("change_usd") / pl.col("previous_usd"))
                          .otherwise(None).alias("change_pct"))
            .sort(pl.col("change_usd").abs(), descending=True).head(n))


def cache_savings(con, by: str = "model", since: datetime | None = None,
                  until: datetime | None = None):
    """What prompt caching saved: cached tokens priced at the plain input price (the
    list price) against what was paid for them.

    The plain input price of each model is implied by the warehouse itself
    (``sum(cost_input_usd) / sum(input_uncached_tokens)`` over the period), so this works
    on any warehouse, whoever priced it. Columns: ``cached_tokens``, ``list_usd``,
    ``paid_usd``, ``saved_usd``, ``saved_pct``."""
    dim = _dims(by)[0]
    cond, params = period_filter(since, until)
    sql = f"""
        WITH price AS (
            SELECT model, sum(cost_input_usd) / nullif(sum(input_uncached_tokens), 0) AS p_in
            FROM ev WHERE {cond} AND input_uncached_tokens > 0 GROUP BY model)
        SELECT {DIMENSIONS[dim]} AS "{dim}",
               CAST(coalesce(sum(cache_read_tokens + cache_write_tokens), 0) AS BIGINT)
                   AS cached_tokens,
               coalesce(sum((cache_read_tokens + cache_write_tokens) * p_in), 0) AS list_usd,
               coalesce(sum(cost_cache_usd), 0) AS paid_usd
        FROM ev JOIN price USING (model) WHERE {cond}
        GROUP BY 1 HAVING sum(cache_read_tokens + cache_write_tokens) > 0"""
    import polars as pl

    frame = to_frame(con, sql, params + params)
    return (frame.with_columns((pl.col("list_usd") - pl.col("paid_usd")).alias("saved_usd"))
            .with_columns((pl.col("saved_usd") / pl.col("list_usd")).alias("saved_pct"))
            .sort("saved_usd", descending=True))


def totals(con, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """One row of the fast measures over the period, as a dict (notebook headlines)."""
    frame = attribution(con, [], since, until, measures=FAST_MEASURES)
    return frame.row(0, named=True)


def bounds(con) -> tuple[datetime | None, datetime | None]:
    """The first and last call start in the warehouse (notebooks default their period)."""
    lo, hi = con.execute("SELECT min(start_time), max(start_time) FROM ev").fetchall()[0]
    return lo, (hi + timedelta(microseconds=1)) if hi is not None else None
