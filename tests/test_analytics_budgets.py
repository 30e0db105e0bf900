"""Budgets: burn-down and run-rate forecast on a warehouse of known spend, caps read from
a real gateway's admin API over HTTP, and the budget-exhaustion finding."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jupyter_vkeys.analytics import budgets, detectors, source
from jupyter_vkeys.analytics.policies import PolicyUnavailable, fetch_caps

NOW = datetime(2026, 3, 16, 12, tzinfo=timezone.utc)  # a Monday, mid-month


@pytest.fixture
def wh(tmp_path):
    """ann (team ml) spends $2 every day at 09:00 from Feb 20; bob $1 only on weekdays;
    ann's kernel key is a child of her key k-ann."""
    rows = []
    day = datetime(2026, 2, 20, 9, tzinfo=timezone.utc)
    while day < NOW:
        rows.append(("kann-1", "k-ann", "ann", "ml", 2.0, day))
        if day.weekday() < 5:
            rows.append(("k-bob", None, "bob", "ml", 1.0, day))
        day += timedelta(days=1)
    table = pa.table({"key_id": [r[0] for r in rows], "parent_key_id": [r[1] for r in rows],
                      "user": [r[2] for r in rows], "team": [r[3] for r in rows],
                      "cost_usd": [r[4] for r in rows], "status": ["ok"] * len(rows),
                      "start_time": pa.array([r[5] for r in rows], pa.timestamp("us", "UTC"))})
    (tmp_path / "events" / "date=2026-02-20").mkdir(parents=True)
    pq.write_table(table, tmp_path / "events" / "date=2026-02-20" / "import.parquet")
    return source.connect(tmp_path)


def test_forecast_of_a_steady_spender(wh):
    fc = budgets.forecast(wh, {"scope": "user:ann", "usd": 100, "period": "month"}, NOW)
    assert fc.window_start == "2026-03-01T00:00:00Z" and fc.window_end == "2026-04-01T00:00:00Z"
    assert fc.spent_usd == pytest.approx(16 * 2.0)  # Mar 1..16 at 09:00
    assert fc.run_rate_usd_per_day == pytest.approx(2.0)
    # the rest of the 16th (09:00 already spent: the rate is per day) + 15 days
    assert fc.forecast_usd == pytest.approx(32 + 2.0 * (15.5), rel=1e-6)
    assert fc.forecast_low_usd <= fc.forecast_usd <= fc.forecast_high_usd
    assert fc.days_to_exhaustion == pytest.approx((100 - 32) / 2.0)
    assert not fc.exhausts_before_reset
    key = budgets.forecast(wh, {"scope": "key:k-ann", "usd": 40, "period": "month"}, NOW)
    assert key.spent_usd == pytest.approx(32.0)  # the child key's calls count for its parent
    assert key.exhausts_before_reset and key.exhaustion_at == "2026-03-20T12:00:00Z"


def test_weekday_rates_and_team_burn_down(wh):
    fc = budgets.forecast(wh, {"scope": "user:bob", "usd": 1000, "period": "week"}, NOW)
    # Monday noon: bob spent $1 today; 4 more weekdays ahead plus half of today, no weekend
    assert fc.spent_usd == pytest.approx(1.0)
    assert fc.forecast_usd == pytest.approx(1.0 + 1.0 * 4.5, rel=0.01)
    table = budgets.burn_down(wh, [{"scope": "team:ml", "usd": 60, "period": "month"},
                                   {"scope": "user:bob", "usd": 1000, "period": "month"}], NOW)
    assert table["scope"].to_list() == ["team:ml", "user:bob"]  # most at risk first
    assert table.row(0, named=True)["exhausts_before_reset"]
    series = budgets.cumulative(wh, "team:ml", datetime(2026, 3, 1, tzinfo=timezone.utc), NOW)
    assert series["cumulative_usd"].to_list()[-1] == pytest.approx(series["spend_usd"].sum())
    with pytest.raises(ValueError, match="unknown scope 'org:x'"):
        budgets.scope_sql("org:x")


def test_exhaustion_finding(wh):
    found = budgets.exhaustion_findings(wh, [{"scope": "team:ml", "usd": 60, "period": "month"},
                                            {"scope": "user:bob", "usd": 500, "period": "month"}],
                                        NOW)
    assert [f.entity["scope"] for f in found] == ["team:ml"]
    f = found[0]
    assert f.detector == "budget_exhaustion" and f.expected == 60 and f.actual > 60
    assert f.root_cause[0].dimension == "user" and f.root_cause[0].value == "ann"
    assert "team:ml's month budget of $60.00" in f.explanation


def test_caps_from_a_real_gateway(gateway, wh):
    status, _ = gateway.admin("PUT", "/policies/team:ml",
                              {"budgets": [{"usd": 60, "period": "month", "soft": 0.8}]})
    assert status == 200
    _, key = gateway.create_key(owner="ann", team="ml", budgets=[{"usd": 5, "period": "day"}])
    caps = fetch_caps(gateway.url, gateway.admin_token)
    assert {"scope": "team:ml", "usd": 60.0, "period": "month"}.items() <= caps[0].items()
    assert any(c["scope"] == f"key:{key['id']}" and c["usd"] == 5.0 for c in caps)
    found = detectors.scan(wh, NOW - timedelta(hours=6), NOW, budget_caps=caps,
                           detectors=["budget_exhaustion"])
    assert [f.entity["scope"] for f in found] == ["team:ml"]
    with pytest.raises(PolicyUnavailable, match="answered 401") as err:
        fetch_caps(gateway.url, "not-the-token")
    assert "not-the-token" not in str(err.value)
    with pytest.raises(PolicyUnavailable, match="failed"):
        fetch_caps("http://127.0.0.1:9", gateway.admin_token, timeout=2)
