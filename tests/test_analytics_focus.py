"""FOCUS 1.2 export: the spec's mandatory columns with their types, costs that add up to
the warehouse's, the CLI in both formats."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jupyter_vkeys.analytics import focus, focus_rules, source
from jupyter_vkeys.analytics.simulate import simulate

END = datetime(2026, 3, 2, tzinfo=timezone.utc)
SINCE, UNTIL = END - timedelta(days=3), END - timedelta(days=1)

# FOCUS 1.2 column types: Decimal (costs, quantities), Date/Time (UTC), String
DECIMAL = {"BilledCost", "ContractedCost", "EffectiveCost", "ListCost", "PricingQuantity",
           "ConsumedQuantity", "ListUnitPrice", "ContractedUnitPrice",
           "CommitmentDiscountQuantity"}
DATETIME = {"BillingPeriodEnd", "BillingPeriodStart", "ChargePeriodEnd", "ChargePeriodStart"}
NOT_NULL = {"BilledCost", "BillingAccountId", "BillingCurrency", "BillingPeriodEnd",
            "BillingPeriodStart", "ChargeCategory", "ChargeDescription", "ChargePeriodEnd",
            "ChargePeriodStart", "ContractedCost", "EffectiveCost", "InvoiceIssuerName",
            "ListCost", "ProviderName", "PublisherName", "ServiceCategory", "ServiceName"}


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    out = tmp_path_factory.mktemp("wh")
    simulate(days=4, users=8, teams=2, seed=9, out=out, end=END)
    return out


def run(*args):
    return subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "export-focus", *args],
                          capture_output=True, text=True, timeout=120)


def test_parquet_mandatory_columns_and_types(wh, tmp_path):
    out = tmp_path / "focus.parquet"
    r = run("--warehouse", str(wh), "--since", SINCE.isoformat(), "--until", UNTIL.isoformat(),
            "--out", str(out))
    assert r.returncode == 0, r.stderr
    table = pq.read_table(out)
    schema = table.schema
    for name in focus.MANDATORY:
        assert name in schema.names, name
    for name in schema.names:
        t = schema.field(name).type
        if name in DECIMAL:
            assert pa.types.is_decimal(t), (name, t)
        elif name in DATETIME:
            assert pa.types.is_timestamp(t) and t.tz in ("UTC", "+00:00", "Etc/UTC"), (name, t)
        elif name != "x_Calls":
            assert pa.types.is_string(t) or pa.types.is_large_string(t), (name, t)
    for name in NOT_NULL:
        assert table[name].null_count == 0, name
    assert set(table["ChargeCategory"].to_pylist()) == {"Usage"}
    assert set(table["BillingCurrency"].to_pylist()) == {"USD"}
    assert all(name.startswith("x_") for name in schema.names
               if name not in focus.MANDATORY + focus.CONDITIONAL)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    (bad,) = con.execute(f"""SELECT count(*) FROM read_parquet('{out}') WHERE
        ChargePeriodEnd <= ChargePeriodStart OR ChargePeriodStart < ? OR ChargePeriodEnd > ?
        OR BillingPeriodStart > ChargePeriodStart OR BillingPeriodEnd < ChargePeriodEnd""",
                         [SINCE, UNTIL]).fetchall()[0]
    assert bad == 0
    # the money adds up to the warehouse's, per user
    got = dict(con.execute(f"SELECT x_User, sum(BilledCost)::DOUBLE FROM read_parquet('{out}') "
                           "GROUP BY 1").fetchall())
    want = dict(con.execute(f"""SELECT "user", sum(cost_usd) FROM read_parquet(
        '{wh}/events/*/*.parquet') WHERE start_time >= ? AND start_time < ?
        AND status != 'dry_run' GROUP BY 1""", [SINCE, UNTIL]).fetchall())
    assert got.keys() == want.keys()
    for user, usd in want.items():
        assert abs(got[user] - usd) < 1e-6, user


def test_csv_and_frame(wh, tmp_path):
    out = tmp_path / "focus.csv"
    r = run("--warehouse", str(wh), "--out", str(out))
    assert r.returncode == 0, r.stderr
    with open(out, newline="") as f:
        header = next(csv.reader(f))
    assert set(focus.MANDATORY) <= set(header) and "x_Notebook" in header
    frame = focus.frame(source.connect(wh), SINCE, UNTIL)
    assert frame.height > 0 and set(frame["x_TokenClass"].unique()) >= {"input", "output"}


def test_bad_input(wh, tmp_path):
    for args, message in [(["--out", str(tmp_path / "x.xlsx")], "must end in .parquet or .csv"),
                          (["--out", str(tmp_path / "x.csv"), "--since", "soon"],
                           "--since 'soon' is not an ISO 8601 time")]:
        r = run("--warehouse", str(wh), *args)
        assert r.returncode != 0 and message in r.stderr and "Traceback" not in r.stderr


def test_export_keeps_the_focus_column_rules(wh, tmp_path):
    """The CLI checks what it wrote; the checker is run again here on both formats, and
    the negotiated-price and commitment columns hold what FOCUS 1.2 asks of them."""
    out = tmp_path / "focus.parquet"
    r = run("--warehouse", str(wh), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "FOCUS column rules: none broken" in r.stdout
    assert focus_rules.check(out) == []
    table = pq.read_table(out)
    for name in focus_rules.COMMITMENT_DETAIL + ("CommitmentDiscountId",):
        assert name in table.schema.names and table[name].null_count == table.num_rows, name
    assert table["ContractedUnitPrice"].null_count == 0
    assert table["ContractedUnitPrice"].to_pylist() == table["ListUnitPrice"].to_pylist()
    assert set(table["PricingUnit"].to_pylist()) <= {"1M Tokens", "Requests"}
    csv_out = tmp_path / "focus.csv"
    assert run("--warehouse", str(wh), "--out", str(csv_out)).returncode == 0
    assert focus_rules.check(csv_out) == []


def test_the_rule_checker_names_what_a_broken_export_breaks(wh, tmp_path):
    """Each rule can fail: a file edited to break it is reported with the rule and a row."""
    good = tmp_path / "good.parquet"
    focus.export(source.connect(wh), good, SINCE, UNTIL)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    breakages = {
        "ListUnitPrice x PricingQuantity = ListCost":
            "* REPLACE (CAST(ListCost * 2 AS DECIMAL(38, 12)) AS ListCost)",
        "ChargePeriodStart is before ChargePeriodEnd":
            "* REPLACE (ChargePeriodEnd - INTERVAL 2 HOUR AS ChargePeriodEnd)",
        "CommitmentDiscountStatus is null without a CommitmentDiscountId":
            "* REPLACE ('Used' AS CommitmentDiscountStatus)",
        "ChargeCategory is one of Usage, Purchase, Tax, Credit, Adjustment":
            "* REPLACE ('Consumption' AS ChargeCategory)",
        "BilledCost must not be null": "* REPLACE (CAST(NULL AS DECIMAL(38, 12)) AS BilledCost)",
        "ContractedUnitPrice is set on usage and purchase rows":
            "* REPLACE (CAST(NULL AS DECIMAL(38, 12)) AS ContractedUnitPrice)",
        "columns outside the spec start with x_: Notebook": "*, x_Notebook AS Notebook",
        "BilledCost is a decimal (found DOUBLE)": "* REPLACE (CAST(BilledCost AS DOUBLE) AS "
                                                  "BilledCost)",
        "Mandatory columns present: missing PricingUnit": "* EXCLUDE (PricingUnit)",
    }
    for rule, select in breakages.items():
        bad = tmp_path / "bad.parquet"
        con.execute(f"COPY (SELECT {select} FROM read_parquet('{good}')) TO '{bad}' "
                    "(FORMAT PARQUET)")
        found = focus_rules.check(bad)
        assert rule in [v.rule for v in found], (rule, [str(v) for v in found])
        assert all(v.rows > 0 for v in found), found
