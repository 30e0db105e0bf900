"""The small Altair chart of MyUsage: spend per day, with title, units and tooltips.

Called by :class:`~.usage_view.MyUsage` with :func:`~.usage_controller.by_day`'s rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["mimebundle", "spend_per_day"]

MAX_DAYS = 14
VEGALITE_V5 = "https://vega.github.io/schema/vega-lite/v5.json"


def spend_per_day(days: Sequence[dict[str, Any]], title: str = "Your spend per day"):
    """An ``altair.Chart`` of ``[{day, calls, cost_usd}]`` (bars; USD axis; tooltips)."""
    import altair as alt

    recent = list(days)[-MAX_DAYS:]
    data = alt.Data(values=[{"day": d["day"], "calls": d["calls"],
                             "cost_usd": round(float(d["cost_usd"]), 8)} for d in recent])
    return (alt.Chart(data, title=alt.Title(title, subtitle=f"UTC days (last {MAX_DAYS} at "
                                                            "most); recent calls"))
            .mark_bar(color="#1976d2")
            .encode(x=alt.X("day:O", title="day (UTC)", axis=alt.Axis(labelAngle=-45)),
                    y=alt.Y("cost_usd:Q", title="spend (USD)",
                            axis=alt.Axis(format="$,.6~f", tickCount=4)),
                    tooltip=[alt.Tooltip("day:O", title="day"),
                             alt.Tooltip("cost_usd:Q", title="spend (USD)", format="$,.6~f"),
                             alt.Tooltip("calls:Q", title="calls")])
            .properties(width=alt.Step(22), height=140))

def mimebundle(chart) -> dict:
    """What an Output widget shows: the Vega-Lite spec under the v5 mimetype (rendered
    offline by JupyterLab's own Vega extension, tooltips included; the spec uses only
    v5 features) and a line of text for frontends without it."""
    spec = chart.to_dict()
    spec["$schema"] = VEGALITE_V5
    title = spec.get("title")
    text = title.get("text") if isinstance(title, dict) else title
    return {"application/vnd.vegalite.v5+json": spec,
            "text/plain": f"<chart: {text or 'spend per day'}>"}
