"""Budgets: burn-down per scope against its caps, a run-rate forecast to the end of each
window with an interval, and days until exhaustion.

Called by the ``budgets_and_forecast`` notebook and by the ``budget_exhaustion``
detector. Caps are mappings ``{"scope", "usd", "period"}`` (from :mod:`.policies` when a
gateway is reachable, or written by hand); spend always comes from the warehouse, so the
module runs from the warehouse alone. Windows are the gateway's (calendar day, week from
Monday, month, or ``total``; UTC), computed by :mod:`jupyter_vkeys.policy.windows`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ..policy.windows import FOREVER, window
from .findings import Cause, Finding, iso, money

Z80 = 1.2816  # two-sided 80% interval
DAY = 86400.0


def scope_sql(scope: str) -> tuple[str, list[Any]]:
    """The WHERE clause over ``ev`` of a scope: a key counts its per-kernel children."""
    if scope == "global":
        return "TRUE", []
    kind, _, name = scope.partition(":")
    column = {"user": '"user"', "team": "team", "project": "project"}.get(kind)
    if column:
        return f"{column} = ?", [name]
    if kind == "key":
        return "(key_id = ? OR parent_key_id = ?)", [name, name]
    raise ValueError(f"unknown scope {scope!r} (global, user:x, team:x, project:x, key:<id>)")


@dataclass
class Forecast:
    """One cap's burn-down and forecast (USD; times ISO 8601 UTC)."""

    scope: str
    period: str
    cap_usd: float
    window_start: str | None
    window_end: str | None
    spent_usd: float
    remaining_usd: float
    run_rate_usd_per_day: float
    forecast_usd: float          # spend expected by the window's end
    forecast_low_usd: float      # 80% interval
    forecast_high_usd: float
    days_to_exhaustion: float | None   # from now, at the run rate (None: not at this rate)
    exhaustion_at: str | None
    exhausts_before_reset: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain mapping (notebook tables, JSON)."""
        return asdict(self)


def _daily(con, cond: str, params: list[Any], start: datetime, end: datetime) -> list[float]:
    """Spend per UTC day in ``[start, end)``, zero-filled."""
    rows = dict(con.execute(f"""SELECT CAST(date_trunc('day', start_time) AS DATE),
        coalesce(sum(cost_usd), 0) FROM ev WHERE {cond} AND start_time >= ? AND start_time < ?
        GROUP BY 1""", params + [start, end]).fetchall())
    days = []
    d = start
    while d < end:
        days.append(float(rows.get(d.date(), 0.0)))
        d += timedelta(days=1)
    return days


def forecast(con, cap: dict[str, Any], now: datetime, history_days: int = 14) -> Forecast:
    """Burn-down and forecast of one cap at ``now``.

    Run rate: mean daily spend over the last ``history_days`` full days, separately for
    weekdays and weekends (so a Friday forecast does not assume weekend traffic is a
    weekday's); the interval adds day-to-day variation and the uncertainty of the mean
    (80%). Days to exhaustion divide what remains by the rate ahead."""
    now = now.astimezone(timezone.utc)
    scope, period, usd = cap["scope"], cap["period"], float(cap["usd"])
    cond, params = scope_sql(scope)
    w0, w1 = window(period, now.timestamp(), timezone.utc)
    start = datetime.fromtimestamp(w0, timezone.utc) if w0 > 0 else None
    end = datetime.fromtimestamp(w1, timezone.utc) if w1 != FOREVER else None
    spent = con.execute(f"SELECT coalesce(sum(cost_usd), 0) FROM ev WHERE {cond} AND "
                        "start_time >= ? AND start_time < ?",
                        params + [start or datetime(1970, 1, 1, tzinfo=timezone.utc), now]
                        ).fetchall()[0][0]
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    hist_start = today - timedelta(days=history_days)
    daily = _daily(con, cond, params, hist_start, today)
    kinds = [(hist_start + timedelta(days=i)).weekday() >= 5 for i in range(len(daily))]
    rates = {}
    sds = {}
    for weekend in (False, True):
        xs = [x for x, k in zip(daily, kinds) if k == weekend] or daily or [0.0]
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / max(len(xs) - 1, 1)
        rates[weekend], sds[weekend] = mean, math.sqrt(var) + 0.0
    horizon_end = end or (now + timedelta(days=30))
    # the rest of today, then whole days, each at its kind's rate
    ahead_mean = ahead_var = 0.0
    mean_err = 0.0
    t = now
    while t < horizon_end:
        nxt = min(t.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1),
                  horizon_end)
        frac = (nxt - t).total_seconds() / DAY
        k = t.weekday() >= 5
        ahead_mean += rates[k] * frac
        ahead_var += (sds[k] * frac) ** 2
        mean_err += sds[k] / math.sqrt(max(len(daily) / (7 if k else 1.4), 1)) * frac
        t = nxt
    spread = Z80 * math.sqrt(ahead_var + mean_err ** 2)
    fc = spent + ahead_mean
    remaining = max(usd - spent, 0.0)
    rate = sum(daily) / len(daily) if daily else 0.0
    days_left: float | None = None
    when: str | None = None
    if remaining <= 0:
        days_left, when = 0.0, iso(now)
    elif rate > 0:
        days_left = remaining / rate
        when = iso(now + timedelta(days=days_left))
    before_reset = remaining <= 0 or (days_left is not None and (
        end is None or now + timedelta(days=days_left) < end))
    return Forecast(scope, period, usd, iso(start) if start else None,
                    iso(end) if end else None, float(spent), usd - float(spent), rate, fc,
                    max(float(spent), fc - spread), fc + spread, days_left, when, before_reset)


def burn_down(con, caps: list[dict[str, Any]], now: datetime):
    """One row per cap (a Polars DataFrame), most at risk first (share of cap forecast)."""
    import polars as pl

    rows = [forecast(con, cap, now).as_dict() for cap in caps]
    if not rows:
        return pl.DataFrame()
    return (pl.DataFrame(rows).with_columns(
        (pl.col("forecast_usd") / pl.col("cap_usd")).alias("forecast_share"))
        .sort("forecast_share", descending=True))


def cumulative(con, scope: str, start: datetime, end: datetime):
    """Cumulative spend by day of a scope from ``start`` to ``end`` (burn-down chart)."""
    import polars as pl

    cond, params = scope_sql(scope)
    daily = _daily(con, cond, params, start, end)
    days = [start + timedelta(days=i) for i in range(len(daily))]
    total, acc = 0.0, []
    for x in daily:
        total += x
        acc.append(total)
    return pl.DataFrame({"day": [d.date() for d in days], "spend_usd": daily,
                         "cumulative_usd": acc})


def exhaustion_findings(con, caps: list[dict[str, Any]], now: datetime) -> list[Finding]:
    """A ``budget_exhaustion`` finding per cap forecast to run out before its window
    resets (the ``total`` pot: within 30 days). Called by :func:`.detectors.scan`."""
    out = []
    for cap in caps:
        fc = forecast(con, cap, now)
        if fc.remaining_usd > 0:
            if fc.window_end is not None and fc.forecast_usd < fc.cap_usd:
                continue  # the rate ahead stays under the cap until it resets
            if fc.window_end is None and (fc.days_to_exhaustion is None
                                          or fc.days_to_exhaustion > 30):
                continue
        cond, params = scope_sql(fc.scope)
        since = datetime.fromisoformat(fc.window_start.replace("Z", "+00:00")) \
            if fc.window_start else now - timedelta(days=30)
        causes = []
        total = fc.spent_usd or 1.0
        for dim, col in (("user", '"user"'), ("notebook", "notebook_path"), ("model", "model")):
            top = con.execute(f"""SELECT {col}, sum(cost_usd) FROM ev WHERE {cond} AND
                start_time >= ? AND start_time < ? GROUP BY 1 ORDER BY 2 DESC NULLS LAST
                LIMIT 1""", params + [since, now]).fetchall()
            row = top[0] if top else None
            if row and row[0] is not None and row[1]:
                causes.append(Cause(dim, str(row[0]), float(row[1]) / total))
        causes.sort(key=lambda c: -c.contribution)
        kind, _, name = fc.scope.partition(":")
        entity = {"scope": fc.scope, "key_id": name if kind == "key" else None,
                  "user": name if kind == "user" else None,
                  "team": name if kind == "team" else None,
                  "project": name if kind == "project" else None}
        when = fc.exhaustion_at or iso(now)
        sentence = (f"{fc.scope}'s {fc.period} budget of {money(fc.cap_usd)} "
                    + ("is spent" if fc.remaining_usd <= 0 else
                       f"runs out around {when} at {money(fc.run_rate_usd_per_day)}/day")
                    + (f", before it resets at {fc.window_end}" if fc.window_end else "")
                    + (f"; the largest share is {causes[0].dimension} {causes[0].value} "
                       f"({causes[0].contribution:.0%})" if causes else "")
                    + "; raise the cap or slow that spend.")
        out.append(Finding("budget_exhaustion", entity, iso(now), when, fc.forecast_usd,
                           fc.cap_usd, fc.forecast_low_usd, fc.forecast_high_usd,
                           fc.forecast_usd / fc.cap_usd, max(fc.forecast_usd - fc.cap_usd, 0),
                           causes[:3], sentence))
    return out
