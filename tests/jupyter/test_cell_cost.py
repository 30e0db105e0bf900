"""Cost per cell and dry runs in real kernels of a real `jupyter server`, as installed: the
provisioner loads the cell extension into ipykernel kernels; a cell that calls a model gets
one quiet line; `%%vkeys dry_run` reports what the real models would have cost; the
warehouse rows carry the cell id and execution count; a gateway that went away or a
revoked key never breaks a kernel."""

from __future__ import annotations

from pathlib import Path

from servers import JupyterProcess, isolated_env

CALL = """
import openai
client = openai.OpenAI()
r = client.chat.completions.create(model="gpt-4o-mini", max_tokens=7,
                                   messages=[{"role": "user", "content": "hi"}])
print("REPLY", r.usage.completion_tokens)
"""

DRY = """%%vkeys dry_run
import anthropic, openai
openai.OpenAI().chat.completions.create(model="gpt-4o-mini", max_tokens=500,
                                        messages=[{"role": "user", "content": "plan"}])
anthropic.Anthropic().messages.create(model="claude-haiku-4-5", max_tokens=2000,
                                      messages=[{"role": "user", "content": "essay"}])
raise ValueError("the cell fails after two calls")
"""


def _events(data_dir: Path) -> list[dict]:
    from jupyter_vkeys.warehouse.readers import read_table
    return read_table("events", data_dir).to_pylist()


def plain(output: dict) -> list[str]:
    return [d.get("text/plain", "") for d in output["displays"]]


def test_cell_cost_line_dry_run_and_attribution(tmp_path):
    with JupyterProcess("server", tmp_path, env=isolated_env(tmp_path)) as server:
        kernel_id = server.start_session("analysis.ipynb")["kernel"]["id"]
        quiet = server.execute(kernel_id, "x = 1 + 1")
        called = server.execute(kernel_id, CALL)
        dry = server.execute(kernel_id, DRY)
        after_dry = server.execute(kernel_id, CALL)
        server.execute(kernel_id, "%vkeys quiet")
        silenced = server.execute(kernel_id, CALL)
        events = _events(server.data_dir)

    assert quiet["status"] == "ok" and not quiet["displays"], "no line for a cell without calls"
    assert "REPLY 7" in called["text"]
    [line] = [t for t in plain(called) if t.startswith("vkeys")]
    assert "1 call" in line and "$" in line and "left" in line, line
    html = [d["text/html"] for d in called["displays"] if "text/html" in d][0]
    assert "mathjax_ignore" in html

    reports = [t for t in plain(dry) if t.startswith("dry run")]
    assert reports, dry
    report = reports[0]
    assert "2 call(s)" in report and "gpt-4o-mini" in report and "claude-haiku-4-5" in report
    assert "worst case" in report and "expected" in report
    assert any("ValueError" in e for e in dry["errors"]), "the cell's error is shown too"
    assert "REPLY 7" in after_dry["text"] and any(t.startswith("vkeys") for t in plain(after_dry))
    assert not any(t.startswith("vkeys") for t in plain(silenced))

    mine = [e for e in events if e["notebook_path"] == "analysis.ipynb"]
    ok = [e for e in mine if e["status"] == "ok"]
    dry_rows = [e for e in mine if e["status"] == "dry_run"]
    assert len(ok) == 3 and len(dry_rows) == 2
    assert all(e["execution_count"] for e in ok), ok
    assert len({e["execution_count"] for e in ok}) == 3, "each cell its own count"
    # the In[n] the frontend shows for each calling cell (IPython 9.9+ counts a cell
    # before pre_run_cell, earlier versions after it: both must give the frontend's n)
    shown = {called["execution_count"], after_dry["execution_count"],
             silenced["execution_count"]}
    assert {e["execution_count"] for e in ok} == shown, (ok, shown)
    assert {e["execution_count"] for e in dry_rows} == {dry["execution_count"]}
    assert all(e["cost_pico"] == 0 and e["dry_run_worst_usd"] > 0 for e in dry_rows)
    assert all(e["schema_version"] == 2 for e in mine)


def test_kernel_survives_a_revoked_key(tmp_path):
    with JupyterProcess("server", tmp_path, env=isolated_env(tmp_path)) as server:
        kernel_id = server.start_session("r.ipynb")["kernel"]["id"]
        env = server.execute(kernel_id, "import os; print(os.environ['VKEYS_KEY_ID'])")
        key_id = env["text"].strip()
        status, _ = server.request("POST", f"/vkeys/api/keys/{key_id}/revoke", {})
        assert status == 200
        first = server.execute(kernel_id, "y = 2")
        second = server.execute(kernel_id, "y = 3")
    assert first["status"] == "ok" and second["status"] == "ok"
    assert "revoked" in first["text"] and "restart the kernel" in first["text"]
    assert "revoked" not in second["text"], "said once, then quiet"
