"""Cost per cell and dry runs at the gateway (issue 10, items 6 and 7): a key's calls between
a cell's start and end belong to it; a dry-run cell is answered by the fake at no cost and
priced as the real model; the warehouse gets schema v2 columns, read with v1 files."""

from __future__ import annotations


import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import anthropic_client, key_call, openai_client

PRICES = {"gpt-4o-mini": {"input_mtok": 0.15, "output_mtok": 0.6},
          "claude-haiku-4-5": {"input_mtok": 1, "output_mtok": 5}}


def api(gw, path: str, body: dict, key: str) -> tuple[int, dict]:
    return key_call(gw, "POST", path, key, body)


def test_calls_between_start_and_end_belong_to_the_cell(make_gateway):
    gw = make_gateway(fake_mode="always", price_overrides=PRICES)
    key, record = gw.create_key(owner="ds", budgets=[{"usd": 5, "period": "month"},
                                                     {"usd": 1, "period": "day"}])
    other, _ = gw.create_key(owner="ds2")
    status, started = api(gw, "/api/cells", {"action": "start", "cell_id": "c-1",
                                             "execution_count": 7}, key)
    assert status == 200 and started["started"]
    client = openai_client(gw, key)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                       messages=[{"role": "user", "content": "hi"}])
    anthropic_client(gw, key).messages.create(model="claude-haiku-4-5", max_tokens=5,
                                              messages=[{"role": "user", "content": "x"}])
    openai_client(gw, other).chat.completions.create(  # another key: not this cell's
        model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    status, summary = api(gw, "/api/cells", {"action": "end"}, key)
    assert status == 200
    assert summary["calls"] == 3 and summary["cell_id"] == "c-1"
    assert summary["execution_count"] == 7 and summary["cost_usd"] > 0
    tight = summary["tightest_budget"]
    assert tight["period"] == "day" and tight["cap_usd"] == 1
    assert tight["remaining_usd"] == pytest.approx(1 - summary["cost_usd"], abs=1e-9)
    events = [e for e in gw.events if e["key_id"] == record["id"]]
    assert [e["cell_id"] for e in events] == ["c-1"] * 3
    assert {e["execution_count"] for e in events} == {7}
    assert all(e["cell_id"] == "" for e in gw.events if e["key_id"] != record["id"])
    # after the end, calls belong to no cell
    client.chat.completions.create(model="gpt-4o-mini", max_tokens=5,
                                   messages=[{"role": "user", "content": "hi"}])
    assert gw.events[-1]["cell_id"] == "" and gw.events[-1]["execution_count"] is None
    status, summary = api(gw, "/api/cells", {"action": "end"}, key)
    assert status == 200 and summary["calls"] == 0


@pytest.mark.parametrize("body, field", [
    ({"action": "jump"}, "action"), ({"action": "start", "cell_id": 5}, "cell_id"),
    ({"action": "start", "execution_count": -1}, "execution_count"),
    ({"action": "start", "dry_run": "yes"}, "dry_run"),
    ({"action": "start", "cell_id": "x" * 300}, "cell_id")])
def test_bad_cell_requests(gateway, body, field):
    key, _ = gateway.create_key(owner="x")
    status, answer = api(gateway, "/api/cells", body, key)
    assert status == 400 and answer["error"]["param"] == field


def test_cells_need_a_virtual_key(gateway):
    status, answer = api(gateway, "/api/cells", {"action": "start"}, "not-a-key")
    assert status == 401 and "virtual key" in answer["error"]["message"]
    status, answer = api(gateway, "/api/cells", {"action": "start"}, gateway.admin_token)
    assert status == 401


def test_dry_run_answers_from_the_fake_and_costs_nothing(make_gateway):
    gw = make_gateway(fake_mode="always", price_overrides=PRICES)
    key, record = gw.create_key(owner="dr", models=["gpt-4o-mini", "claude-*"],
                                budgets=[{"usd": 0.001, "period": "day"}])
    api(gw, "/api/cells", {"action": "start", "cell_id": "d", "execution_count": 1,
                           "dry_run": True}, key)
    client = openai_client(gw, key)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", max_tokens=1000, messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-vkeys-dry-run"] == "true"
    worst = float(raw.headers["x-vkeys-dry-run-worst-usd"])
    assert worst == pytest.approx(1000 * 0.6e-6 + 0.15e-6 * len(raw.http_request.content),
                                  rel=1e-6)
    assert raw.parse().choices[0].message.content
    # a call the real budget would refuse ($5/M output x 64000 > $0.001): answered, reported
    with anthropic_client(gw, key).messages.stream(
            model="claude-haiku-4-5", max_tokens=64000,
            messages=[{"role": "user", "content": "long"}]) as stream:
        assert stream.get_final_text()
    # a model outside the allowlist: answered by the fake too, reported as refused
    client.chat.completions.create(model="gpt-4o", max_tokens=5,
                                   messages=[{"role": "user", "content": "x"}])
    status, summary = api(gw, "/api/cells", {"action": "end"}, key)
    assert summary["dry_run"] and summary["calls"] == 3
    models = {m["model"]: m for m in summary["models"]}
    assert models["gpt-4o-mini"]["allowed"] is True
    assert models["gpt-4o-mini"]["worst_usd"] == pytest.approx(worst, rel=1e-6)
    assert 0 < models["gpt-4o-mini"]["expected_usd"] < worst
    assert models["claude-haiku-4-5"]["allowed"] is False
    assert "budget exhausted" in models["claude-haiku-4-5"]["verdicts"][0]
    assert models["gpt-4o"]["allowed"] is False and "not allowed" in models["gpt-4o"][
        "verdicts"][0]
    dry = [e for e in gw.events if e["key_id"] == record["id"]]
    assert [e["status"] for e in dry] == ["dry_run"] * 3
    assert all(e["cost_pico"] == 0 and e["cost_usd"] is None for e in dry)
    assert dry[0]["dry_run_worst_usd"] == pytest.approx(worst, rel=1e-6)
    status, report = gw.admin("GET", f"/keys/{record['id']}")
    budget = report["limits"][0]["budgets"][0]
    assert budget["spent_usd"] == 0 and budget["held_usd"] == 0
    assert report["limits"][0]["requests_last_minute"] == 0


def test_expected_cost_learns_from_history(make_gateway):
    gw = make_gateway(fake_mode="always", price_overrides=PRICES)
    key, _ = gw.create_key(owner="h")
    client = openai_client(gw, key)
    for i in range(6):
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=10,
                                       messages=[{"role": "user", "content": f"q{i}"}])
    status, figures = api(gw, "/api/estimate", {"operation": "chat.completions", "body": {
        "model": "gpt-4o-mini", "max_tokens": 4000,
        "messages": [{"role": "user", "content": "hello there"}]}}, key)
    assert status == 200, figures
    assert figures["typical_output_tokens"] == 10
    assert figures["typical_output_source"] == "history"
    assert figures["allowed"] and figures["input_tokens"] > 0
    assert figures["expected_usd"] < figures["worst_usd"]
    status, figures = api(gw, "/api/estimate", {"body": {"model": "gpt-4o-mini",
                                                         "max_tokens": -4}}, key)
    assert status == 400 and "max_tokens" in figures["error"]["message"]


def test_v1_and_v2_files_read_together(tmp_path):
    from jupyter_vkeys.warehouse import connect, read_table, scan
    from jupyter_vkeys.warehouse.schema import EVENTS_SCHEMA

    v1_fields = [f for f in EVENTS_SCHEMA if f.name not in (
        "cell_id", "execution_count", "dry_run_cost_usd", "dry_run_worst_usd")]
    day = tmp_path / "warehouse" / "events" / "date=2026-11-30"
    day.mkdir(parents=True)

    def row(schema_fields, **values):
        base = {f.name: None for f in schema_fields}
        base.update(schema_version=values.pop("schema_version"), event_id=values.pop("eid"),
                    start_time=pa.scalar(1796000000_000000, pa.timestamp("us", tz="UTC")),
                    cost_pico=values.pop("cost", 0), **values)
        return base

    v1 = pa.Table.from_pylist([row(v1_fields, schema_version=1, eid="a", cost=5)],
                              schema=pa.schema(v1_fields))
    v2 = pa.Table.from_pylist([row(list(EVENTS_SCHEMA), schema_version=2, eid="b", cost=7,
                                   cell_id="c9", execution_count=3)], schema=EVENTS_SCHEMA)
    pq.write_table(v1, day / "seg-00000000000000001.parquet")
    pq.write_table(v2, day / "seg-00000000000000002.parquet")
    (tmp_path / "warehouse" / "journal").mkdir()
    con = connect(tmp_path)
    rows = con.execute("select event_id, schema_version, cell_id, execution_count, cost_pico "
                       "from events order by event_id").fetchall()
    assert rows == [("a", 1, None, None, 5), ("b", 2, "c9", 3, 7)]
    frame = scan("events", tmp_path).select("event_id", "cell_id").sort("event_id").collect()
    assert frame["cell_id"].to_list() == [None, "c9"]
    table = read_table("events", tmp_path)
    assert sorted(table.column("cell_id").to_pylist(), key=str) == [None, "c9"] or \
        sorted(table.column("cell_id").to_pylist(), key=lambda v: v or "") == [None, "c9"]
