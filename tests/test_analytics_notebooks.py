"""The bundled analytics notebooks run top to bottom in a real kernel (nbclient, isolated
Jupyter dirs), on a simulated warehouse and, for one, with no warehouse at all (it must
simulate and say so); each one's main chart renders to PNG with vl-convert.
(The quickstart notebook runs against a real server in tests/jupyter/test_extension.py.)"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

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
