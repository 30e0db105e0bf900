"""The traffic simulator: the documented warehouse layout with the real schema, read by
the project's own readers; realistic shape (seasonality, cache, errors, refusals);
labelled anomalies; the CLI as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from jupyter_vkeys import warehouse
from jupyter_vkeys.analytics import source
from jupyter_vkeys.analytics.simulate import LABELS_FILE, read_labels, simulate
from jupyter_vkeys.warehouse.schema import EVENTS_SCHEMA

END = datetime(2026, 3, 2, tzinfo=timezone.utc)  # a Monday, 00:00 UTC


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    return out, simulate(days=14, users=20, teams=3, seed=7, anomalies=True, out=out, end=END)


def test_layout_and_schema(sim):
    out, s = sim
    files = sorted((out / "events").glob("date=*/*.parquet"))
    assert [f.parent.name for f in files] == [f"date=2026-02-{d:02d}" for d in range(16, 29)] + [
        "date=2026-03-01"]
    for f in files:
        schema = pq.read_schema(f)
        assert schema.remove_metadata().equals(EVENTS_SCHEMA.remove_metadata()), f
        day = f.parent.name.removeprefix("date=")
        days = pc.unique(pc.strftime(pq.read_table(f)["start_time"], "%Y-%m-%d")).to_pylist()
        assert days == [day]
    con = warehouse.connect(out)  # the project's reader sees every row once
    assert con.execute("select count(*) from events").fetchall()[0][0] == s.table.num_rows


def test_realistic_shape(sim):
    out, _ = sim
    con = source.connect(out)
    weekday, weekend = con.execute("""
        select sum(case when isodow(start_time) <= 5 then 1 else 0 end) / 10.0,
               sum(case when isodow(start_time) > 5 then 1 else 0 end) / 4.0
        from ev where entity_key in (select entity_key from ev where notebook_path is not null)
          and notebook_path is not null""").fetchall()[0]
    assert weekday > 2.5 * weekend
    statuses = {r[0] for r in con.execute("select distinct status from ev").fetchall()}
    assert {"ok", "error", "upstream_error", "refused_rate", "refused_budget", "cancelled",
            "dry_run"} <= statuses
    bad = con.execute("""select count(*) from ev where input_tokens != input_uncached_tokens +
        cache_read_tokens + cache_write_tokens or abs(cost_usd - cost_input_usd - cost_cache_usd
        - cost_output_usd) > 1e-12 or reasoning_tokens > output_tokens
        or end_time < first_token_time or first_token_time < start_time""").fetchall()[0][0]
    assert bad == 0
    n_cache, n_teams, n_models, n_nb = con.execute("""select
        count(*) filter (cache_read_tokens > 0),
        count(distinct team), count(distinct model), count(distinct notebook_path) from ev
        """).fetchall()[0]
    assert n_cache > 0 and n_teams == 3 and n_models >= 4 and n_nb >= 4
    refused_cost = con.execute("select sum(cost_usd) from ev where is_refusal").fetchall()[0][0]
    assert refused_cost == 0


def test_labels_point_at_real_rows(sim):
    out, s = sim
    labels = read_labels(out)
    assert labels == s.labels and {lab["kind"] for lab in labels} == {
        "spend_spike", "runaway_loop", "new_model", "error_spike", "spend_drop"}
    con = source.connect(out)
    for lab in labels:
        n = con.execute("select count(*) from ev where entity_key = ? and start_time >= ? "
                        "and start_time < ?", [lab["entity_key"], lab["start"], lab["end"]]
                        ).fetchall()[0][0]
        if lab["kind"] == "spend_drop":
            assert n == 0, lab
        else:
            assert n > 0, lab


def test_same_seed_same_rows(tmp_path):
    a = simulate(days=2, users=3, seed=5, end=END).table
    b = simulate(days=2, users=3, seed=5, end=END).table
    assert a.equals(b)


def test_cli(tmp_path):
    out = tmp_path / "wh"
    run = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "simulate", "--days", "3",
                          "--users", "4", "--teams", "2", "--anomalies", "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "events/s" in run.stdout and "injected anomalies" in run.stdout
    assert json.loads((out / LABELS_FILE).read_text())
    again = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "simulate", "--days",
                            "1", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "--force" in again.stderr and "Traceback" not in again.stderr
    bad = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "simulate", "--users", "0",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "--users must be at least 1" in bad.stderr
