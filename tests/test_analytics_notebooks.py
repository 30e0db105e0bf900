"""The bundled analytics notebooks run top to bottom in a real kernel (nbclient, isolated
Jupyter dirs), on a simulated warehouse and, for one, with no warehouse at all (it must
simulate and say so); each one's main chart renders to PNG with vl-convert; and each
runs as a scheduled papermill job would, its parameters given on the command line.
(The quickstart notebook runs against a real server in tests/jupyter/test_extension.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_vkeys.analytics import focus_rules
from jupyter_vkeys.analytics.simulate import simulate

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ANALYTICS = ["cost_attribution", "budgets_and_forecast", "anomaly_detection", "finops_export"]
END = datetime(2026, 3, 20, tzinfo=timezone.utc)  # mid-month: a burn-down with days in it


@pytest.fixture(scope="module")
def wh(tmp_path_factory):
    out = tmp_path_factory.mktemp("wh")
    simulate(days=21, users=12, teams=3, seed=13, anomalies=True, out=out, end=END)
    return out


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("VKEYS_CHART_DIR", os.environ.get("VKEYS_CHART_DIR", ""))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    for var, sub in [("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
                     ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython"),
                     ("VKEYS_DATA_DIR", "vkeys-empty")]:
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    return tmp_path


def test_notebooks_are_bundled_with_a_parameters_cell():
    for name in ANALYTICS + ["quickstart"]:
        assert (NOTEBOOKS / f"{name}.ipynb").exists(), name
    for name in ANALYTICS:
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert "parameters" in first_code.metadata.get("tags", []), name
        assert "warehouse = None" in first_code.source and "since = None" in first_code.source
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name


@pytest.mark.parametrize("name", ANALYTICS)
def test_notebook_runs_and_renders_its_main_chart(name, wh, isolated):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    simulated = name == "cost_attribution"  # this one finds no warehouse and simulates
    if simulated:
        params.source += "\nsimulated_users = 10\n"
    else:
        params.source += f"\nwarehouse = {str(wh)!r}\n"
    if name == "finops_export":
        params.source += f"out = {str(isolated / 'focus.parquet')!r}\n"
    charts = Path(os.environ.get("VKEYS_CHART_DIR") or isolated)  # CI may keep them
    charts.mkdir(parents=True, exist_ok=True)
    png = charts / f"{name}.png"
    nb.cells.append(nbformat.v4.new_code_cell(
        "from jupyter_vkeys.analytics.charts import save_png\n"
        f"print(save_png(main_chart, {str(png)!r}))"))
    client = NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(isolated)}})
    client.execute()  # raises CellExecutionError on any error
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    banner = json.dumps(nb.cells[2].outputs)
    assert ("SIMULATED" in banner) == simulated, banner[:500]
    for o in outputs:
        html = (o.get("data") or {}).get("text/html", "")
        vega = any("vegalite" in k for k in (o.get("data") or {}))
        if "$" in html and not vega and "vegaEmbed" not in html:
            assert 'class="mathjax_ignore"' in html, html[:300]
    assert png.exists() and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
    print(f"main chart of {name}: {png}")
    if name == "finops_export":
        assert (isolated / "focus.parquet").exists()


@pytest.mark.parametrize("name", ANALYTICS)
def test_notebook_runs_under_papermill_with_its_parameters(name, wh, isolated):
    """The analyst's scheduled job: ``papermill IN OUT -p warehouse DIR -p since ...`` as a
    command. Papermill injects the values after the ``parameters`` cell; the notebook
    analyses that warehouse over exactly that period (its banner and period line say so)
    and the executed copy holds no error."""
    out_nb = isolated / f"{name}.out.ipynb"
    since, until = "2026-03-12T00:00:00Z", "2026-03-19T00:00:00Z"
    args = [sys.executable, "-m", "papermill", str(NOTEBOOKS / f"{name}.ipynb"), str(out_nb),
            "--kernel", "python3", "--cwd", str(isolated), "--no-progress-bar",
            "-p", "warehouse", str(wh), "-p", "since", since, "-p", "until", until,
            "-p", "simulate_if_empty", "False"]
    if name == "finops_export":
        args += ["-p", "out", str(isolated / "scheduled.parquet")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    nb = nbformat.read(out_nb, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and f'warehouse = "{wh}"' in injected[0].source
    outputs = json.dumps([c.get("outputs", []) for c in nb.cells if c.cell_type == "code"])
    assert '"output_type": "error"' not in outputs
    assert "SIMULATED" not in outputs
    assert "2026-03-12 00:00 to 2026-03-19 00:00 UTC" in outputs, outputs[:2000]
    if name == "finops_export":
        assert focus_rules.check(isolated / "scheduled.parquet") == []
