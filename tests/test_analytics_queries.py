"""Attribution checked against plain SQL over the same Parquet files, on simulated data;
older (v1) and foreign-written files read alongside."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jupyter_vkeys.analytics import queries, source
from jupyter_vkeys.analytics.simulate import simulate

END = datetime(2026, 3, 2, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    out = tmp_path_factory.mktemp("wh")
    simulate(days=10, users=15, teams=3, seed=11, out=out, end=END)
    return out


def plain(wh, sql: str, params=()):
    """Plain SQL straight over the Parquet files (no view, no normalisation)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE VIEW raw AS SELECT * FROM read_parquet('{wh}/events/*/*.parquet')")
    return con.execute(sql, list(params)).fetchall()


def close(a, b):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def test_by_user_and_day_matches_plain_sql(wh):
    con = source.connect(wh)
    since, until = END - timedelta(days=7), END - timedelta(days=1)
    got = queries.attribution(con, "user,day", since, until)
    want = plain(wh, """
        SELECT "user", CAST(start_time AS DATE), sum(cost_usd), count(*),
               sum(cache_read_tokens), sum(output_tokens), sum(reasoning_tokens),
               quantile_cont(latency_ms, 0.95) FILTER (WHERE status = 'ok'),
               avg(CASE WHEN status IN ('error','upstream_error','timeout','lost') THEN 1.0
                   ELSE 0.0 END),
               avg(CASE WHEN status LIKE 'refused_%' THEN 1.0 ELSE 0.0 END)
        FROM raw WHERE start_time >= ? AND start_time < ? GROUP BY ALL""", [since, until])
    rows = {(r["user"], r["day"]): r for r in got.iter_rows(named=True)}
    assert len(rows) == len(want) > 50
    for user, day, spend, calls, cache, out, reasoning, p95, err, ref in want:
        r = rows[(user, day)]
        assert close(r["spend_usd"], spend) and r["calls"] == calls
        assert r["cache_read_tokens"] == cache and r["output_tokens"] == out
        assert r["reasoning_tokens"] == reasoning and close(r["latency_p95_ms"], p95)
        assert close(r["error_rate"], err) and close(r["refusal_rate"], ref)
    spends = got["spend_usd"].to_list()
    assert spends == sorted(spends, reverse=True)


def test_every_dimension_sums_to_the_total(wh):
    con = source.connect(wh)
    (total,), = plain(wh, "SELECT sum(cost_usd) FROM raw")
    for dim in queries.DIMENSIONS:
        frame = queries.attribution(con, dim, measures=("spend_usd", "calls"))
        assert close(frame["spend_usd"].sum(), total), dim
    with pytest.raises(ValueError, match="unknown dimension.*nope"):
        queries.attribution(con, "user,nope")


def test_cell_attribution_and_movers(wh):
    con = source.connect(wh)
    cells = queries.attribution(con, "notebook,cell", measures=("spend_usd",))
    want = plain(wh, "SELECT notebook_path, cell_id, sum(cost_usd) FROM raw GROUP BY ALL")
    assert len(cells) == len(want)
    since, until = END - timedelta(days=3), END
    mv = queries.movers(con, "team", since, until)
    want = dict((t, (a, b)) for t, a, b in plain(wh, """SELECT team,
        sum(cost_usd) FILTER (WHERE start_time >= ?), sum(cost_usd) FILTER (WHERE start_time < ?)
        FROM raw WHERE start_time >= ? AND start_time < ? GROUP BY 1""",
        [since, since, since - timedelta(days=3), until]))
    for r in mv.iter_rows(named=True):
        now, before = want[r["team"]]
        assert close(r["spend_usd"], now or 0) and close(r["previous_usd"], before or 0)
    top = queries.top_spenders(con, "user", n=3)
    assert len(top) == 3 and 0 < top["share"].sum() <= 1


def test_cache_savings_against_plain_sql(wh):
    con = source.connect(wh)
    got = {r["model"]: r for r in queries.cache_savings(con).iter_rows(named=True)}
    want = plain(wh, """WITH p AS (SELECT response_model m, sum(cost_input_usd) /
        sum(input_uncached_tokens) p FROM raw WHERE input_uncached_tokens > 0 GROUP BY 1)
        SELECT m, sum((cache_read_tokens + cache_write_tokens) * p), sum(cost_cache_usd)
        FROM raw JOIN p ON raw.response_model = p.m GROUP BY 1
        HAVING sum(cache_read_tokens + cache_write_tokens) > 0""")
    assert len(got) == len(want) > 2
    for m, list_usd, paid in want:
        assert close(got[m]["list_usd"], list_usd) and close(got[m]["paid_usd"], paid)
        assert got[m]["saved_usd"] > 0  # cache reads are cheaper than plain input


def test_v1_and_foreign_files_read_together(tmp_path):
    sim = simulate(days=2, users=4, seed=3, end=END).table
    v1 = sim.drop_columns(["cell_id", "execution_count", "dry_run_cost_usd",
                           "dry_run_worst_usd"]).slice(0, 100)
    (tmp_path / "events" / "date=2026-02-28").mkdir(parents=True)
    pq.write_table(v1, tmp_path / "events" / "date=2026-02-28" / "v1.parquet")
    # another writer: a few columns, naive timestamps, int32 tokens
    foreign = pa.table({
        "start_time": pa.array([datetime(2026, 2, 27, 9), datetime(2026, 2, 27, 10)],
                               pa.timestamp("ms")),
        "user": ["zoe", "zoe"], "key_id": ["k1", "k1"], "request_model": ["gpt-4o", "gpt-4o"],
        "status": ["ok", "error"], "cost_usd": [0.5, 0.0],
        "output_tokens": pa.array([10, 0], pa.int32())})
    (tmp_path / "events" / "date=2026-02-27").mkdir(parents=True)
    pq.write_table(foreign, tmp_path / "events" / "date=2026-02-27" / "import.parquet")
    con = source.connect(tmp_path)
    frame = queries.attribution(con, "user,model,cell")
    zoe = frame.filter(frame["user"] == "zoe").row(0, named=True)
    assert zoe["spend_usd"] == 0.5 and zoe["calls"] == 2 and zoe["model"] == "gpt-4o"
    assert zoe["error_rate"] == 0.5 and zoe["cell"] is None and zoe["output_tokens"] == 10
    assert close(frame["spend_usd"].sum(), sum(v1["cost_usd"].to_pylist()) + 0.5)
