"""Altair charts for the bundled notebooks, always over frames aggregated beforehand
(a few hundred rows at most), with titles, units and tooltips.

Called by the notebooks; :func:`save_png` renders any of them with vl-convert (CI
checks the main chart of each notebook renders).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

USD = "$,.2f"


def _alt():
    import altair as alt

    alt.data_transformers.disable_max_rows()
    return alt


def _data(frame) -> Any:
    """Altair wants pandas (or a dict); Polars frames are converted."""
    return frame.to_pandas() if hasattr(frame, "to_pandas") else frame


def spend_bar(frame, dim: str, title: str, n: int = 15, width: int = 520):
    """Horizontal bars of ``spend_usd`` by ``dim``, largest first, with calls in tooltips."""
    alt = _alt()
    data = _data(frame.head(n) if hasattr(frame, "head") else frame)
    tips = [alt.Tooltip(f"{dim}:N", title=dim), alt.Tooltip("spend_usd:Q", title="spend (USD)",
                                                            format=USD)]
    if "calls" in data.columns:
        tips.append(alt.Tooltip("calls:Q", title="calls", format=","))
    return alt.Chart(data, title=title).mark_bar().encode(
        x=alt.X("spend_usd:Q", title="spend (USD)", axis=alt.Axis(format="$,.2f")),
        y=alt.Y(f"{dim}:N", sort="-x", title=dim),
        tooltip=tips).properties(width=width)


def spend_over_time(frame, time: str, color: str, title: str, width: int = 640):
    """Stacked bars of ``spend_usd`` per ``time`` (day or hour) coloured by ``color``."""
    alt = _alt()
    return alt.Chart(_data(frame), title=title).mark_bar().encode(
        x=alt.X(f"{time}:T", title=f"{time} (UTC)"),
        y=alt.Y("sum(spend_usd):Q", title="spend (USD)", axis=alt.Axis(format="$,.2f")),
        color=alt.Color(f"{color}:N", title=color),
        tooltip=[alt.Tooltip(f"{time}:T", title=time), alt.Tooltip(f"{color}:N", title=color),
                 alt.Tooltip("sum(spend_usd):Q", title="spend (USD)", format=USD)]
    ).properties(width=width, height=280)


def burn_down(series, cap_usd: float, forecast_usd: float, low: float, high: float,
              window_end, title: str, width: int = 600):
    """Cumulative spend, the cap as a rule, and the forecast to the window's end with its
    80% interval."""
    import pandas as pd

    alt = _alt()
    data = _data(series)
    last = data.iloc[-1]
    fc = pd.DataFrame({"day": pd.to_datetime([last["day"], window_end]), "forecast_usd": [
        last["cumulative_usd"], forecast_usd], "low": [last["cumulative_usd"], low],
        "high": [last["cumulative_usd"], high]})
    base = alt.Chart(data, title=title)
    line = base.mark_line(point=True).encode(
        x=alt.X("day:T", title="day (UTC)"),
        y=alt.Y("cumulative_usd:Q", title="cumulative spend (USD)",
                axis=alt.Axis(format="$,.0f")),
        tooltip=[alt.Tooltip("day:T"), alt.Tooltip("spend_usd:Q", title="that day (USD)",
                                                   format=USD),
                 alt.Tooltip("cumulative_usd:Q", title="so far (USD)", format=USD)])
    band = alt.Chart(fc).mark_area(opacity=0.2).encode(x="day:T", y="low:Q", y2="high:Q")
    proj = alt.Chart(fc).mark_line(strokeDash=[6, 4]).encode(
        x="day:T", y="forecast_usd:Q",
        tooltip=[alt.Tooltip("forecast_usd:Q", title="forecast (USD)", format=USD)])
    cap = alt.Chart(pd.DataFrame({"cap": [cap_usd]})).mark_rule(color="firebrick").encode(
        y="cap:Q", tooltip=[alt.Tooltip("cap:Q", title="cap (USD)", format=USD)])
    return (band + proj + line + cap).properties(width=width, height=300)


def actual_vs_expected(frame, title: str, width: int = 640):
    """Hourly ``actual`` against ``expected`` (with ``lower``/``upper`` band) of a key,
    findings shaded (``flag``)."""
    alt = _alt()
    data = _data(frame)
    base = alt.Chart(data, title=title).encode(x=alt.X("hour:T", title="hour (UTC)"))
    band = base.mark_area(opacity=0.25).encode(
        y=alt.Y("lower:Q", title="spend per hour (USD)", axis=alt.Axis(format="$,.2f")),
        y2="upper:Q")
    expected = base.mark_line(strokeDash=[4, 3], color="gray").encode(y="expected:Q")
    actual = base.mark_line(color="steelblue").encode(
        y="actual:Q", tooltip=[alt.Tooltip("hour:T"), alt.Tooltip("actual:Q", format=USD,
                                                                   title="actual (USD)"),
                               alt.Tooltip("expected:Q", format=USD, title="expected (USD)")])
    flagged = base.transform_filter("datum.flag").mark_point(color="firebrick", size=60).encode(
        y="actual:Q", tooltip=[alt.Tooltip("hour:T"), alt.Tooltip("actual:Q", format=USD)])
    return (band + expected + actual + flagged).properties(width=width, height=260)


def findings_bar(frame, title: str, width: int = 520):
    """Impact in USD per finding, coloured by detector."""
    alt = _alt()
    return alt.Chart(_data(frame), title=title).mark_bar().encode(
        x=alt.X("impact_usd:Q", title="impact (USD)", axis=alt.Axis(format="$,.2f")),
        y=alt.Y("label:N", sort="-x", title="finding"),
        color=alt.Color("detector:N", title="detector"),
        tooltip=[alt.Tooltip("detector:N"), alt.Tooltip("label:N", title="who"),
                 alt.Tooltip("start:N", title="start (UTC)"),
                 alt.Tooltip("impact_usd:Q", title="impact (USD)", format=USD),
                 alt.Tooltip("explanation:N")]).properties(width=width)


def save_png(chart, path: str | Path, scale: float = 1.5) -> Path:
    """Render ``chart`` to a PNG file with vl-convert; returns the path."""
    import vl_convert as vlc

    path = Path(path)
    path.write_bytes(vlc.vegalite_to_png(chart.to_json(), scale=scale))
    return path
