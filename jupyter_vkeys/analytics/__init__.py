"""The analyst's side: attribution, budgets and forecast, anomaly findings, FOCUS export,
a traffic simulator and Altair charts.

Reads the warehouse only (any directory laid out as ``events/date=YYYY-MM-DD/*.parquet``,
schema v1 or later, plus a live journal tail when there is one); never imports the
gateway. Policy caps come from the gateway's admin API over HTTP when one is reachable
(:mod:`.policies`). Submodules are imported on use so ``import jupyter_vkeys.analytics``
stays cheap:

- :mod:`.source`    open a warehouse as a DuckDB connection with a normalized ``ev`` view
- :mod:`.queries`   attribution, top spenders, movers, cache savings
- :mod:`.budgets`   burn-down, run-rate forecast with interval, days to exhaustion
- :mod:`.detectors` anomaly detectors returning :class:`.findings.Finding` records
- :mod:`.focus`     FinOps FOCUS 1.2 export
- :mod:`.simulate`  a vectorised traffic simulator (with labelled anomalies)
- :mod:`.charts`    Altair charts over aggregated frames
- :mod:`.cli`       ``jupyter vkeys anomalies | export-focus | simulate``
"""

from __future__ import annotations

__all__ = ["budgets", "charts", "detectors", "findings", "focus", "queries", "simulate",
           "source"]
