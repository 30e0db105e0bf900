"""The warehouse: nothing lost across SIGKILL, readable from other processes while written,
budgets rebuilt from it, CLI queries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support import ServeProcess, openai_client

from jupyter_vkeys import warehouse
from jupyter_vkeys.warehouse.parquet import compact_partition, snapshot


def _drive(url: str, key: str, stop: threading.Event, completed: list[str], errors: list,
           worker: int) -> None:
    # Worker 0 makes slow calls (5 s): in flight at the kill, their holds must be charged.
    headers = {"x-vkeys-fake-latency-ms": "5000"} if worker == 0 else {}
    client = openai.OpenAI(api_key=key, base_url=url + "/openai/v1", max_retries=0, timeout=10,
                           default_headers=headers)
    i = 0
    while not stop.is_set():
        i += 1
        try:
            if i % 2:
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", max_tokens=20,
                    messages=[{"role": "user", "content": f"w{worker} call {i}"}])
                raw.parse()
                completed.append(raw.headers["x-request-id"])
            else:
                with client.chat.completions.with_streaming_response.create(
                        model="gpt-4o-mini", max_tokens=20, stream=True,
                        messages=[{"role": "user", "content": f"w{worker} stream {i}"}]) as resp:
                    chunks = list(resp.parse())
                    rid = resp.headers["x-request-id"]
                assert chunks
                completed.append(rid)
        except Exception as exc:  # the kill interrupts calls in flight
            errors.append(exc)
            if stop.is_set():
                return


def test_sigkill_loses_nothing_and_budgets_rebuild(tmp_path):
    data = tmp_path / "gw"
    data.mkdir()
    gw = ServeProcess(data, {"fake_mode": "always", "fake_latency_ms": 20,
                             "fake_chunk_delay_ms": 2})
    try:
        _, record = gw.admin("POST", "/keys", {"owner": "erin", "team": "ml", "budgets": [
            {"usd": 100, "period": "total"}, {"usd": 50, "period": "month"}]})
        key = record["key"]
        stop, completed, errors = threading.Event(), [], []
        threads = [threading.Thread(target=_drive, args=(gw.url, key, stop, completed, errors, w))
                   for w in range(6)]
        for t in threads:
            t.start()
        time.sleep(3.0)
        gw.kill()  # SIGKILL while calls are in flight
        stop.set()
        for t in threads:
            t.join(15)
    finally:
        gw.stop()
    assert len(completed) > 50, "the client should have completed many calls before the kill"
    survivor = ServeProcess(data, {"fake_mode": "always"})
    try:
        _, report = survivor.admin("GET", f"/keys/{record['id']}")
    finally:
        survivor.stop()
    con = warehouse.connect(data)
    rows = con.execute("SELECT request_id, count(*) FROM events WHERE key_id = ? "
                       "GROUP BY request_id", [record["id"]]).fetchall()
    counts = dict(rows)
    missing = [rid for rid in completed if rid not in counts]
    assert not missing, f"{len(missing)} completed calls are missing from the warehouse"
    assert all(n == 1 for n in counts.values()), "a call was recorded twice"
    statuses = dict(con.execute("SELECT status, count(*) FROM events GROUP BY status").fetchall())
    assert statuses["ok"] >= len(completed)
    lost = [r[0] for r in con.execute("SELECT request_id FROM events WHERE status = 'lost'")
            .fetchall()]
    assert lost, "the slow call in flight at the kill must be recorded as lost"
    assert not set(lost) & set(completed)
    total_pico = con.execute("SELECT sum(cost_pico) FROM events WHERE key_id = ?",
                             [record["id"]]).fetchone()[0]
    budgets = {b["period"]: b for b in report["limits"][0]["budgets"]}
    assert budgets["total"]["spent_usd"] == pytest.approx(total_pico / 1e12, abs=1e-12)
    assert budgets["month"]["spent_usd"] == pytest.approx(total_pico / 1e12, abs=1e-12)
    assert budgets["total"]["held_usd"] == 0
    print(f"completed {len(completed)}, lost (charged at hold) {len(lost)}, "
          f"statuses {statuses}")


READER = textwrap.dedent("""
    import sys, time, json
    from jupyter_vkeys import warehouse
    root, seconds = sys.argv[1], float(sys.argv[2])
    deadline = time.time() + seconds
    seen, last = 0, 0
    while time.time() < deadline or seen < 3:  # (3 reads however slow the machine is)
        con = warehouse.connect(root)
        n, distinct = con.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events").fetchone()
        assert n == distinct, f"duplicates: {n} rows, {distinct} distinct"
        assert n >= last, f"rows went backwards: {last} -> {n}"
        last = n
        frame = warehouse.scan("events", root).collect()
        assert frame.height >= n and frame["event_id"].n_unique() == frame.height
        pdf = warehouse.read_table("events", root).to_pandas()
        assert pdf["event_id"].is_unique
        seen += 1
        con.close()
    print(json.dumps({"reads": seen, "rows": last}))
""")


def test_readers_in_other_processes_while_writing(make_gateway, tmp_path):
    gw = make_gateway(fake_mode="always", roll_seconds=0.1)
    key, _ = gw.create_key(owner="fay")
    root = Path(gw.gateway.data_dir) / "warehouse"
    script = tmp_path / "reader.py"
    script.write_text(READER)
    readers = [subprocess.Popen([sys.executable, str(script), str(root), "4"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    client = openai_client(gw, key)
    calls = 0
    # Write until both readers are done (4 s, or 3 reads each on a loaded machine), so
    # every read they make races the writer.
    while calls < 20 or any(proc.poll() is None for proc in readers):
        client.chat.completions.create(model="gpt-4o-mini", max_tokens=3,
                                       messages=[{"role": "user", "content": str(calls)}])
        calls += 1
    for proc in readers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        result = json.loads(out)
        assert result["reads"] >= 3
    gw.call_in_loop(gw.gateway.sink.flush)
    gw.gateway.sink.wait_converted()
    con = warehouse.connect(root)
    assert con.execute("SELECT count(*) FROM events WHERE \"user\" = 'fay'").fetchone()[0] == calls
    assert not list(root.rglob("*.tmp")), "temporary files left behind"
    assert list((root / "events").glob("date=*/seg-*.parquet"))


def test_audit_dataset_and_schema_version(make_gateway):
    gw = make_gateway(fake_mode="always")
    key, record = gw.create_key(alias="nb", owner="gus")
    gw.admin("POST", f"/keys/{record['id']}/revoke")
    root = Path(gw.gateway.data_dir) / "warehouse"
    gw.stop()  # closing rolls and converts everything
    con = warehouse.connect(root)
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    audit = con.execute("SELECT action, target, actor FROM audit ORDER BY seq").fetchall()
    assert audit == [("key.create", f"key:{record['id']}", "admin-token"),
                     ("key.revoke", f"key:{record['id']}", "admin-token")]
    files = list((root / "events").rglob("*.parquet")) + list((root / "audit").rglob("*.parquet"))
    schema = pq.read_schema(files[0])
    from jupyter_vkeys.warehouse.version import SCHEMA_VERSION
    assert schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()


def test_event_row_fields(make_gateway):
    gw = make_gateway(fake_mode="always", log_content=True, hash_notebook_paths=True)
    key, record = gw.create_key(alias="nb", owner="gus", team="t", project="p",
                                metadata={"notebook_path": "projects/a.ipynb", "kernel_id": "k1",
                                          "purpose": "demo"})
    openai_client(gw, key).chat.completions.create(
        model="gpt-4o-mini", max_tokens=4, messages=[{"role": "user", "content": "hello"}])
    root = Path(gw.gateway.data_dir) / "warehouse"
    gw.stop()
    row = warehouse.connect(root).execute("SELECT * FROM events").fetchdf().iloc[0]
    assert row["key_alias"] == "nb" and row["user"] == "gus" and row["project"] == "p"
    assert row["kernel_id"] == "k1" and row["notebook_path"] != "projects/a.ipynb"
    assert len(row["notebook_path"]) == 16
    assert json.loads(row["tags"]) == {"purpose": "demo"}
    assert "hello" in row["prompt_text"] and row["output_tokens"] == 4
    assert row["cost_pico"] > 0 and row["cost_usd"] == pytest.approx(row["cost_pico"] / 1e12)
    assert row["latency_ms"] >= row["gateway_overhead_ms"] >= 0
    assert str(row["date"])[:10] == time.strftime("%Y-%m-%d", time.gmtime())
    assert row["event_id"][14] == "7"  # UUIDv7


def test_compaction_keeps_rows_once(tmp_path):
    from jupyter_vkeys.warehouse.schema import EVENTS_SCHEMA
    part = tmp_path / "events" / "date=2026-01-01"
    part.mkdir(parents=True)
    for i in range(10):
        rows = {f.name: [None] for f in EVENTS_SCHEMA}
        rows["event_id"] = [f"e{i}"]
        rows["start_time"] = [1767225600_000000 + i]
        table = pa.table({k: pa.array(v, type=EVENTS_SCHEMA.field(k).type) for k, v in
                          rows.items()}, schema=EVENTS_SCHEMA)
        pq.write_table(table, part / f"seg-{i:017d}.parquet")
    # A reader between the compacted file's rename and the sources' deletion:
    merged = compact_partition(part, min_files=8)
    assert merged.name == f"compact-{0:017d}-{9:017d}.parquet"
    assert [p.name for p in part.iterdir()] == [merged.name]
    pq.write_table(pq.read_table(merged).slice(0, 1), part / f"seg-{3:017d}.parquet")
    assert snapshot(tmp_path, "events").parquet == [merged]


def test_cli_usage_and_sql(make_gateway):
    gw = make_gateway(fake_mode="always")
    for owner in ("ann", "ann", "ben"):
        key, _ = gw.create_key(owner=owner)
        openai_client(gw, key).chat.completions.create(
            model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    data_dir = gw.gateway.data_dir
    env = {**os.environ, "VKEYS_DATA_DIR": data_dir}
    out = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "usage", "--by", "user,day",
                          "--json"], capture_output=True, text=True, env=env, check=True).stdout
    usage = {r["user"]: r for r in json.loads(out)}
    assert usage["ann"]["calls"] == 2 and usage["ben"]["calls"] == 1
    assert usage["ann"]["output_tokens"] == 10 and usage["ann"]["spend_usd"] > 0
    out = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "sql",
                          "SELECT count(*) AS n FROM events"], capture_output=True, text=True,
                         env=env, check=True).stdout
    assert out.split()[-1] == "3"
    bad = subprocess.run([sys.executable, "-m", "jupyter_vkeys.cli", "sql", "SELEC nonsense"],
                         capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "error:" in bad.stderr and "Traceback" not in bad.stderr
