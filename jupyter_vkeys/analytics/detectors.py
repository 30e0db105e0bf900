"""Anomaly detectors over the warehouse, each returning :class:`.findings.Finding` records.

Called by :func:`scan` (``jupyter vkeys anomalies``, the ``anomaly_detection`` notebook,
``benchmarks/anomalies.py``), hourly over the last hours or over any period. The entity
is the *key a person holds*: a per-kernel child key counts toward its parent
(``entity_key`` in :mod:`.source`), so short-lived kernel keys do not each start
without history.

Detectors:

- ``spend_spike`` / ``spend_drop``: spend (calls, for drops) per key and hour against a
  seasonal baseline, ``level x shape(hour of week)``. The shape is the key's own
  hour-of-week profile shrunk toward its team's (so a key a few days old, with no weekly
  pattern yet, borrows its team's); the level is a median of daily levels over the last
  week (robust to the spike itself), switching to the last two days when both moved the
  same way (a level shift alerts, then becomes the new normal). The band comes from a
  compound-Poisson variance (calls x mean squared call cost: heavy-tailed keys get wide
  bands) plus a day-to-day overdispersion term. A fleet-wide common factor (median
  ratio over keys) absorbs holidays and fleet-wide surges. Spikes are judged on rolling
  ``spike_window_hours`` sums; consecutive flagged hours are one finding. A spike must
  also be out of the key's own burstiness (:func:`_burst_stats`: median and upper spread
  of the logs of its busiest window per day): above the high bar whatever drove it, or
  above the low bar when one model or notebook carries most of the excess (the mix
  changed), and with at least ``spike_min_calls`` calls.
- ``level_shift``: a level that stepped up for days (:mod:`.level_shift`).
- ``runaway_loop``: one prompt hash repeated ``loop_calls`` times within
  ``loop_window_minutes`` by one key.
- ``new_model``: first use by a key (with history) of a model it never used, priced at
  least ``new_model_price_ratio`` times the key's usual cost per token.
- ``error_spike`` / ``refusal_spike``: the share of failed (refused) calls in rolling
  windows against the key's own rate, shrunk toward the fleet's (binomial z-score).
- ``budget_exhaustion``: from :mod:`.budgets` when caps are known (policy export).

Thresholds live in :class:`Thresholds`; the defaults were chosen with
``benchmarks/anomalies.py`` (figures in the README).
"""

from __future__ import annotations

import warnings
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable

import numpy as np

from .findings import Cause, Finding, iso, money
from .hourly import HOUR, Hourly, _how, _rolling, _shape, load_hourly
from .level_shift import level_findings
from .thresholds import Thresholds

DETECTORS = ("spend_spike", "spend_drop", "level_shift", "runaway_loop", "new_model",
             "error_spike", "refusal_spike", "budget_exhaustion")


def baseline(m: np.ndarray, hw: Hourly, scan: slice, th: Thresholds) -> np.ndarray:
    """Expected value of ``m`` (key x hour) over the scanned hours, one day at a time:
    ``level x shape`` from the history before that day (see the module docstring)."""
    n_keys = m.shape[0]
    out = np.zeros((n_keys, scan.stop - scan.start))
    lookback = th.lookback_days * 24
    for d0 in range(scan.start, scan.stop, 24):
        d1 = min(d0 + 24, scan.stop)
        hist = slice(max(0, d0 - lookback), d0)
        if hist.stop - hist.start < 1:
            continue
        shape = _shape(m, hw, hist, th)
        # daily levels over the last 7 days: day total / what the shape expects that day
        levels = []
        for back in range(1, 8):
            a, b = d0 - 24 * back, d0 - 24 * (back - 1)
            if a < hist.start:
                break
            cols = slice(a, b)
            expect = shape[:, _how(hw.h0 + a, 24)].sum(axis=1)
            alive = hw.first < b - 12  # alive for at least half of that day
            lv = np.where(alive & (expect > 0), m[:, cols].sum(axis=1) / np.maximum(expect, 1e-12),
                          np.nan)
            levels.append(lv)
        if levels:
            lv = np.array(levels)  # day x key (most recent first)
            with np.errstate(all="ignore"):
                level = np.nanmedian(lv, axis=0)
                if lv.shape[0] >= 4:  # a shift that held two days becomes the level
                    recent = lv[:2]
                    up = np.all(recent > 1.5 * level, axis=0)
                    down = np.all(recent < level / 1.5, axis=0)
                    level = np.where(up | down, np.nanmean(recent, axis=0), level)
        else:
            level = np.full(n_keys, np.nan)
        # shorter history than a day: the mean of what there is
        alive_h = np.clip(d0 - np.maximum(hw.first, hist.start), 0, None)
        young = np.isnan(level) & (alive_h > 0)
        if young.any():
            seg_sum = np.array([m[k, max(hw.first[k], hist.start):d0].sum() for k in
                                np.flatnonzero(young)])
            level[young] = seg_sum / alive_h[young]
        level = np.nan_to_num(level)
        out[:, d0 - scan.start:d1 - scan.start] = level[:, None] * shape[:, _how(hw.h0 + d0,
                                                                                   d1 - d0)]
    return out


def _typical_day(m: np.ndarray, hw: Hourly, scan: slice, days: int = 14) -> np.ndarray:
    """Per key and scanned hour: the 75th percentile of daily totals over the ``days``
    days before that hour's day (days the key existed), a robust "a normal day"."""
    out = np.zeros((m.shape[0], scan.stop - scan.start))
    for d0 in range(scan.start, scan.stop, 24):
        d1 = min(d0 + 24, scan.stop)
        totals = []
        for back in range(1, days + 1):
            a = d0 - 24 * back
            if a < 0:
                break
            t = m[:, a:a + 24].sum(axis=1)
            totals.append(np.where(hw.first < a + 12, t, np.nan))
        if totals:
            x = np.sort(np.array(totals), axis=0)  # NaN (days before the key) sort last
            count = (~np.isnan(x)).sum(axis=0)
            pick = np.maximum(np.floor(0.75 * (count - 1)).astype(int), 0)
            p75 = np.nan_to_num(x[pick, np.arange(x.shape[1])])
            out[:, d0 - scan.start:d1 - scan.start] = p75[:, None]
    return out


def _burst_stats(m: np.ndarray, hw: Hourly, scan: slice, th: Thresholds
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Per key and scanned hour: ``(median, sd)`` of the log of the key's busiest
    ``spike_window_hours`` sum per day, from the days before that hour's day; a window
    above ``exp(median + z x sd)`` is out of the key's own burstiness.

    Each active day of the lookback gives one number, its busiest window; the bar is
    ``exp(median + z x sd)`` of their logs, with ``sd`` read from the upper
    half (90th percentile minus median, over 1.28: quiet weekend days below the median
    do not widen it). Robust: one huge day, or an earlier anomaly, moves it little,
    where the largest window would set the bar alone. A key
    with fewer than ``spike_burst_min_days`` active days uses its team's median spread."""
    w = th.spike_window_hours
    roll = _rolling(m, w)
    n_keys = m.shape[0]
    out_med = np.full((n_keys, scan.stop - scan.start), -np.inf)
    out_sd = np.zeros((n_keys, scan.stop - scan.start))
    lookback_days = th.lookback_days
    for d0 in range(scan.start, scan.stop, 24):
        d1 = min(d0 + 24, scan.stop)
        maxima = []
        for back in range(1, lookback_days + 1):
            a = d0 - 24 * back
            if a < 0:
                break
            day_max = roll[:, a:a + 24].max(axis=1)
            maxima.append(np.where((day_max > 0) & (hw.first < a + 12), day_max, np.nan))
        if not maxima:
            continue
        logs = np.log(np.array(maxima))  # day x key, NaN where idle or before the key
        with np.errstate(all="ignore"):
            med = np.nanmedian(logs, axis=0)
            sd = (np.nanquantile(logs, 0.9, axis=0) - med) / 1.2816
        days = (~np.isnan(logs)).sum(axis=0)
        sd = np.where(days >= 2, sd, np.nan)
        team_sd = np.full(n_keys, np.nan)
        for t in np.unique(hw.team):
            members = (hw.team == t) & (days >= th.spike_burst_min_days)
            if members.any():
                team_sd[hw.team == t] = np.nanmedian(sd[members])
        fleet = np.nanmedian(sd[days >= th.spike_burst_min_days]) \
            if (days >= th.spike_burst_min_days).any() else 1.0
        team_sd = np.where(np.isnan(team_sd), fleet, team_sd)
        young = days < th.spike_burst_min_days
        sd = np.where(young, np.fmax(np.nan_to_num(sd, nan=0.0), team_sd), sd)
        sd = np.maximum(np.nan_to_num(sd), th.spike_burst_min_sd)
        out_med[:, d0 - scan.start:d1 - scan.start] = np.where(days > 0, np.nan_to_num(med),
                                                               -np.inf)[:, None]
        out_sd[:, d0 - scan.start:d1 - scan.start] = sd[:, None]
    return out_med, out_sd


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive True runs in a 1-D array."""
    padded = np.concatenate([[False], flags, [False]])
    d = np.diff(padded.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)))


def _common(actual: np.ndarray, expected: np.ndarray, min_expected: float) -> np.ndarray:
    """Fleet-wide factor per hour: median over keys of trailing-24 h actual/expected."""
    a24, e24 = _rolling(actual, 24), _rolling(expected, 24)
    ratio = np.where(e24 >= min_expected, a24 / np.maximum(e24, 1e-12), np.nan)
    enough = (~np.isnan(ratio)).sum(axis=0) >= 5
    with np.errstate(all="ignore"):
        med = np.where(enough, np.nanmedian(np.where(enough[None, :], ratio, 1.0), axis=0), 1.0)
    return np.nan_to_num(med, nan=1.0)


def _t(hw: Hourly, h: int) -> datetime:
    return datetime.fromtimestamp((hw.h0 + int(h)) * HOUR, timezone.utc)


def spend_findings(hw: Hourly, scan: slice, th: Thresholds) -> list[dict[str, Any]]:
    """Spikes of spend and drops of calls per key (before root causes are attached)."""
    out: list[dict[str, Any]] = []
    s_exp = baseline(hw.spend, hw, scan, th)
    s_act = hw.spend[:, scan]
    common = np.clip(_common(s_act, s_exp, 0.5), 1.0, 4.0)
    s_exp = s_exp * common[None, :]
    w = th.spike_window_hours
    hist = slice(max(0, scan.start - th.lookback_days * 24), scan.start)
    # per-call cost moments from the lookback plus the scan so far (stable enough)
    calls_all = hw.calls[:, : scan.stop].sum(axis=1)
    mean_cost = hw.spend[:, : scan.stop].sum(axis=1) / np.maximum(calls_all, 1)
    ec2 = hw.sq[:, : scan.stop].sum(axis=1) / np.maximum(calls_all, 1)
    a_w, e_w = _rolling(s_act, w), _rolling(s_exp, w)
    typical = _typical_day(hw.spend, hw, scan)
    b_med, b_sd = _burst_stats(hw.spend, hw, scan, th)
    n_w = _rolling(hw.calls[:, scan], w)
    n_exp = e_w / np.maximum(mean_cost, 1e-9)[:, None]
    sd = np.sqrt(n_exp * ec2[:, None] + (th.overdispersion * e_w) ** 2 + ec2[:, None])
    upper = e_w + th.spike_z * sd
    with np.errstate(all="ignore"):
        log_a = np.log(np.maximum(a_w, 1e-300))
    burst = log_a > b_med + th.spike_burst_z * b_sd
    mix_burst = log_a > b_med + th.spike_mix_burst_z * b_sd
    flag = ((a_w > upper) & (a_w >= th.spike_ratio * e_w) & (a_w - e_w >= th.spike_min_usd)
            & (a_w >= th.spike_day_ratio * typical) & (n_w >= th.spike_min_calls)
            & mix_burst)
    for k in np.flatnonzero(flag.any(axis=1)):
        for r0, r1 in _runs(flag[k]):
            h_start, h_end = max(r0 - w + 1, 0), r1  # window of the first flag .. last hour
            act = float(s_act[k, h_start:h_end].sum())
            exp = float(s_exp[k, h_start:h_end].sum())
            i = int(r0 + np.argmax(a_w[k, r0:r1] - upper[k, r0:r1]))
            score = float((a_w[k, i] - e_w[k, i]) / max(sd[k, i], 1e-9))
            up = exp + th.spike_z * float(np.sqrt(max(exp, 0) / max(mean_cost[k], 1e-9) * ec2[k]
                                                 + (th.overdispersion * exp) ** 2 + ec2[k]))
            out.append(dict(detector="spend_spike", k=k, start=_t(hw, scan.start + h_start),
                            end=_t(hw, scan.start + h_end), actual=act, expected=exp,
                            lower=max(0.0, exp - (up - exp)), upper=up, score=score,
                            impact_usd=act - exp, unit="usd",
                            needs_mix=not bool(burst[k, r0:r1].any())))
    # drops: calls of steady keys
    c_exp = baseline(hw.calls, hw, scan, th)
    c_act = hw.calls[:, scan]
    common_c = np.clip(_common(c_act, c_exp, 5.0), 0.05, 1.0)
    c_exp = c_exp * common_c[None, :]
    idx = np.arange(hist.start, hist.stop)
    if idx.size:
        alive = idx[None, :] >= hw.first[:, None]
        n_days = (hist.stop - hist.start) // 24
        tail = slice(hist.stop - n_days * 24, hist.stop)
        daily = hw.calls[:, tail].reshape(len(hw.keys), n_days, 24).sum(axis=2)
        day_alive = (np.arange(tail.start, tail.stop, 24)[None, :] >= hw.first[:, None])
        day_share = ((daily > 0) & day_alive).sum(axis=1) / np.maximum(day_alive.sum(axis=1), 1)
        n_alive = np.maximum(day_alive.sum(axis=1), 1)
        mean_d = (daily * day_alive).sum(axis=1) / n_alive
        var_d = (((daily - mean_d[:, None]) ** 2) * day_alive).sum(axis=1) / n_alive
        cv = np.sqrt(var_d) / np.maximum(mean_d, 1e-9)
        hours_alive = np.maximum(alive.sum(axis=1), 1)
        hour_share = ((hw.calls[:, hist] > 0) & alive).sum(axis=1) / hours_alive
        steady = ((day_share >= th.drop_min_active_days) & (cv <= th.drop_max_daily_cv)
                  & (hour_share >= th.drop_min_active_hours)
                  & (day_alive.sum(axis=1) >= 3))
    else:
        steady = np.zeros(len(hw.keys), bool)
    wd = th.drop_window_hours
    a_d, e_d = _rolling(c_act, wd), _rolling(c_exp, wd)
    dflag = steady[:, None] & (e_d >= th.drop_min_expected_calls) & (a_d <= th.drop_ratio * e_d)
    dflag[:, : wd - 1] = False
    for k in np.flatnonzero(dflag.any(axis=1)):
        for r0, r1 in _runs(dflag[k]):
            h_start, h_end = max(r0 - wd + 1, 0), r1
            act = float(c_act[k, h_start:h_end].sum())
            exp = float(c_exp[k, h_start:h_end].sum())
            sd_c = float(np.sqrt(exp + (th.overdispersion * exp) ** 2))
            spend_exp = float(s_exp[k, h_start:h_end].sum())
            spend_act = float(s_act[k, h_start:h_end].sum())
            out.append(dict(detector="spend_drop", k=k, start=_t(hw, scan.start + h_start),
                            end=_t(hw, scan.start + h_end), actual=act, expected=exp,
                            lower=max(0.0, exp - 3 * sd_c), upper=exp + 3 * sd_c,
                            score=float((exp - act) / max(sd_c, 1e-9)),
                            impact_usd=spend_act - spend_exp, unit="calls"))
    return out


def rate_findings(hw: Hourly, scan: slice, th: Thresholds) -> list[dict[str, Any]]:
    """Error-rate and refusal-rate spikes per key against its own (shrunk) usual rate."""
    out: list[dict[str, Any]] = []
    w = th.rate_window_hours
    n_w = _rolling(hw.calls[:, scan], w)
    for name, mat in (("error_spike", hw.errors), ("refusal_spike", hw.refusals)):
        hist = slice(max(0, scan.start - th.lookback_days * 24), scan.start)
        hist_calls = hw.calls[:, hist].sum(axis=1)
        hist_bad = mat[:, hist].sum(axis=1)
        fleet = (hist_bad.sum() + 1) / (hist_calls.sum() + 100)
        p = (hist_bad + th.rate_prior_calls * fleet) / (hist_calls + th.rate_prior_calls)
        e_w = _rolling(mat[:, scan], w)
        rate = e_w / np.maximum(n_w, 1)
        z = (e_w - n_w * p[:, None]) / np.sqrt(np.maximum(n_w * p[:, None] * (1 - p[:, None]),
                                                          1e-9))
        flag = (n_w >= th.rate_min_calls) & (rate >= th.rate_min) & (
            rate >= th.rate_ratio * p[:, None]) & (z >= th.rate_z)
        for k in np.flatnonzero(flag.any(axis=1)):
            for r0, r1 in _runs(flag[k]):
                h_start, h_end = max(r0 - w + 1, 0), r1
                n = float(hw.calls[k, scan][h_start:h_end].sum())
                bad = float(mat[k, scan][h_start:h_end].sum())
                sd = np.sqrt(p[k] * (1 - p[k]) / max(n, 1))
                # failed calls are rarely billed: the impact is the work to redo, priced
                # at the key's mean cost per call
                spent = hw.spend[k, : scan.stop].sum() / max(hw.calls[k, : scan.stop].sum(), 1)
                lost = max(bad - n * p[k], 0.0) * float(spent)
                out.append(dict(detector=name, k=k, start=_t(hw, scan.start + h_start),
                                end=_t(hw, scan.start + h_end), actual=bad / max(n, 1),
                                expected=float(p[k]), lower=max(0.0, p[k] - 3 * sd),
                                upper=min(1.0, p[k] + 3 * sd),
                                score=float(np.max(z[k, r0:r1])), impact_usd=lost, unit="rate",
                                n=n, bad=bad))
    return out


def loop_findings(con, since: datetime, until: datetime, th: Thresholds
                  ) -> list[dict[str, Any]]:
    """One prompt hash repeated ``loop_calls`` times within the window by one key."""
    bucket = max(1, th.loop_window_minutes // 3)
    rows = con.execute(f"""
        WITH b AS (
            SELECT entity_key, prompt_hash,
                   CAST(epoch(start_time) AS BIGINT) // {bucket * 60} AS b,
                   count(*) AS n, coalesce(sum(cost_usd), 0) AS usd,
                   min(start_time) AS t0, max(start_time) AS t1
            FROM ev WHERE start_time >= ? AND start_time < ? AND prompt_hash IS NOT NULL
              AND entity_key IS NOT NULL
            GROUP BY ALL)
        SELECT * FROM b WHERE (entity_key, prompt_hash) IN (
            SELECT (entity_key, prompt_hash) FROM b GROUP BY ALL HAVING max(n) >= ?)
        ORDER BY entity_key, prompt_hash, b""",
                       [since - timedelta(minutes=th.loop_window_minutes), until,
                        max(2, th.loop_calls // 3)]).fetchall()
    out: list[dict[str, Any]] = []
    per = max(1, th.loop_window_minutes // bucket)
    groups: dict[tuple[str, str], list[tuple]] = {}
    for r in rows:
        groups.setdefault((r[0], r[1]), []).append(r)
    for (key, prompt), rs in groups.items():
        bs = np.array([r[2] for r in rs])
        ns = np.array([r[3] for r in rs], float)
        span = bs.max() - bs.min() + 1
        dense = np.zeros(span)
        dense[bs - bs.min()] = ns
        roll = np.convolve(dense, np.ones(per), mode="full")[:span]
        flag = roll >= th.loop_calls
        for r0, r1 in _runs(flag):
            lo, hi = bs.min() + max(r0 - per + 1, 0), bs.min() + r1
            inside = [r for r in rs if lo <= r[2] < hi]
            t0 = min(r[5] for r in inside)
            t1 = max(r[6] for r in inside)
            if t1 < since:
                continue
            n = float(sum(r[3] for r in inside))
            usd = float(sum(r[4] for r in inside))
            typical = 1.0  # the same prompt within a window: normally once
            out.append(dict(detector="runaway_loop", key=key, prompt=prompt,
                            start=t0.astimezone(timezone.utc),
                            end=t1.astimezone(timezone.utc) + timedelta(seconds=1),
                            actual=n, expected=typical, lower=0.0,
                            upper=float(th.loop_calls - 1), score=float(roll[r0:r1].max()
                                                                         / th.loop_calls),
                            impact_usd=usd * (n - typical) / n, unit="calls"))
    return out


def new_model_findings(con, since: datetime, until: datetime, th: Thresholds
                       ) -> list[dict[str, Any]]:
    """First use by a key with history of a model it never used, much pricier than usual."""
    lookback = since - timedelta(days=th.lookback_days)
    rows = con.execute("""
        WITH km AS (
            SELECT entity_key, model, min(start_time) AS first_use
            FROM ev WHERE start_time >= ? AND start_time < ? AND entity_key IS NOT NULL
              AND model IS NOT NULL AND status = 'ok'
            GROUP BY ALL),
        kf AS (SELECT entity_key, min(start_time) AS key_first FROM ev
               WHERE start_time >= ? AND start_time < ? GROUP BY 1),
        price AS (SELECT model, sum(cost_usd) / nullif(sum(input_tokens + output_tokens), 0) AS p
                  FROM ev WHERE start_time >= ? AND start_time < ? AND status = 'ok' GROUP BY 1),
        cand AS (
            SELECT km.*, key_first FROM km JOIN kf USING (entity_key)
            WHERE first_use >= ? AND first_use < ?
              AND first_use >= key_first + to_microseconds(CAST(? * 86400e6 AS BIGINT)))
        , used AS (
            SELECT c.entity_key, c.model, c.first_use, max(e.start_time) AS last_use,
                   coalesce(sum(e.cost_usd), 0) AS usd,
                   coalesce(sum(e.input_tokens + e.output_tokens), 0) AS tokens,
                   count(*) AS calls
            FROM cand c JOIN ev e ON e.entity_key = c.entity_key AND e.model = c.model
             AND e.start_time >= c.first_use AND e.start_time < c.first_use + INTERVAL 1 DAY
             AND e.start_time < ?
            GROUP BY ALL),
        usual AS (
            SELECT c.entity_key, c.model,
                   sum(e.cost_usd) / nullif(sum(e.input_tokens + e.output_tokens), 0) AS usual_p
            FROM cand c JOIN ev e ON e.entity_key = c.entity_key AND e.start_time >= ?
             AND e.start_time < c.first_use AND e.status = 'ok'
            GROUP BY ALL)
        SELECT u.entity_key, u.model, u.first_use, u.last_use, u.usd, u.tokens, u.calls,
               usual.usual_p, p.p AS model_p
        FROM used u LEFT JOIN usual USING (entity_key, model) LEFT JOIN price p USING (model)""",
                       [lookback, until, lookback, until, lookback, until, since, until,
                        th.new_model_min_history_days, until, lookback]).fetchall()
    out: list[dict[str, Any]] = []
    for key, model, first_use, last_use, usd, tokens, calls, usual_p, model_p in rows:
        if usual_p is None or not usual_p or model_p is None:
            continue
        ratio = model_p / usual_p
        if ratio < th.new_model_price_ratio or usd < th.new_model_min_usd:
            continue
        expected = float(tokens) * usual_p
        out.append(dict(detector="new_model", key=key, model=model,
                        start=first_use.astimezone(timezone.utc),
                        end=(last_use or first_use).astimezone(timezone.utc)
                        + timedelta(seconds=1),
                        actual=float(usd), expected=expected, lower=0.0,
                        upper=expected * th.new_model_price_ratio, score=float(ratio),
                        impact_usd=float(usd) - expected, unit="usd", calls=int(calls),
                        ratio=float(ratio)))
    return out


ROOT_DIMENSIONS = {"model": "model", "notebook": "notebook_path", "cell": "cell_id",
                   "prompt": "prompt_hash", "client": "client", "status": "status",
                   "error": "error_type"}


def root_cause(con, key: str, start: datetime, end: datetime, measure: str = "cost_usd",
               where: str = "TRUE", lookback_days: int = 7, limit: int = 3,
               dimensions: Iterable[str] = ("model", "notebook", "cell", "prompt", "client"),
               table: str = "ev") -> list[Cause]:
    """Which values of model, notebook, cell, prompt, client and status drove a finding:
    each value's excess over its usual share of ``measure`` (``cost_usd`` or ``1`` for
    calls) within ``where``, as a share of the total excess. Called once per finding."""
    base0 = start - timedelta(days=lookback_days)
    parts = []
    for name in dimensions:
        col = ROOT_DIMENSIONS[name]
        parts.append(f"""SELECT '{name}' AS dim, CAST({col} AS VARCHAR) AS v,
            coalesce(sum({measure}) FILTER (start_time >= $2), 0) AS a,
            coalesce(sum({measure}) FILTER (start_time < $2), 0) AS b
            FROM {table} WHERE entity_key = $1 AND start_time >= $4 AND start_time < $3
              AND ({where}) GROUP BY 2""")
    rows = con.execute(" UNION ALL ".join(parts), [key, start, end, base0]).fetchall()
    by_dim: dict[str, list[tuple[str | None, float, float]]] = {}
    for dim, v, a, b in rows:
        by_dim.setdefault(dim, []).append((v, float(a), float(b)))
    hours_now = max((end - start).total_seconds() / HOUR, 1e-9)
    causes = []
    for dim, vals in by_dim.items():
        total_a = sum(a for _, a, _ in vals)
        total_b = sum(b for _, _, b in vals)
        # expected per value: its history share of what history would predict for the window
        scale = (total_b / (lookback_days * 24)) * hours_now if total_b > 0 else 0.0
        excess_total = total_a - scale
        if excess_total <= 0 or total_a <= 0:
            continue
        best = max(vals, key=lambda x: x[1] - (x[2] / total_b * scale if total_b else 0.0))
        excess = best[1] - (best[2] / total_b * scale if total_b else 0.0)
        share = max(0.0, min(1.0, excess / excess_total))
        if best[0] is not None and share >= 0.3:
            if len(vals) == 1 and total_b and best[2] / total_b > 0.9:
                continue  # the only value, in history too: it explains nothing
            causes.append(Cause(dim, best[0], share))
    causes.sort(key=lambda c: -c.contribution)
    return causes[:limit]


def _who(entity: dict[str, Any]) -> str:
    user, team = entity.get("user"), entity.get("team")
    text = f"key {entity.get('key_id')}"
    if user:
        text += f" ({user}" + (f", {team})" if team else ")")
    return text


def _span(start: datetime, end: datetime) -> str:
    if start.date() == (end - timedelta(seconds=1)).date():
        return f"on {start:%a %Y-%m-%d} {start:%H:%M}-{end:%H:%M} UTC"
    return f"from {start:%a %Y-%m-%d %H:%M} to {end:%a %Y-%m-%d %H:%M} UTC"


def _causes_text(causes: list[Cause]) -> str:
    if not causes:
        return ""
    parts = [f"{c.dimension} {c.value} ({c.contribution:.0%})" for c in causes[:2]]
    return "; most of it from " + " and ".join(parts)


def explain(detector: str, entity: dict[str, Any], start: datetime, end: datetime, actual: float,
            expected: float, unit: str, causes: list[Cause], extra: dict[str, Any]) -> str:
    """One sentence a person can act on, per detector."""
    who, span = _who(entity), _span(start, end)
    if detector == "spend_spike":
        times = actual / expected if expected > 0 else float("inf")
        head = (f"{who} spent {money(actual)} {span}, "
                + (f"{times:.1f}x" if times != float("inf") else "far above")
                + f" the {money(expected)} expected")
        return head + _causes_text(causes) + "; check what that notebook or job is doing."
    if detector == "level_shift":
        ratio = extra.get("ratio")
        head = (f"{who} spent {money(actual)} {span} where {money(expected)} was usual"
                + (f", {ratio:.1f}x its level of the {extra.get('reference_days', 14)} days "
                   "before" if ratio else ""))
        return (head + _causes_text(causes) + f"; if it stays, about "
                f"{money(extra.get('per_day_usd', 0) * 30)} more a month: confirm the new "
                "level is meant, or adjust the key's budget.")
    if detector == "spend_drop":
        return (f"{who} made {actual:,.0f} calls {span} where about {expected:,.0f} were "
                "expected; check that the job or service using it still runs.")
    if detector == "runaway_loop":
        where = "".join(f", {c.dimension} {c.value}" for c in causes
                        if c.dimension in ("notebook", "cell", "client"))
        return (f"{who} sent the same prompt {actual:,.0f} times {span}{where} "
                f"({money(extra.get('impact_usd', 0))}); a loop is likely re-sending it: stop "
                "the cell or add a cache.")
    if detector == "new_model":
        return (f"{who} started using {extra.get('model')} {span}: {extra.get('calls')} calls "
                f"for {money(actual)}, {extra.get('ratio', 0):.0f}x its usual cost per token "
                f"({money(expected)} at its usual models); confirm the switch was meant.")
    if detector in ("error_spike", "refusal_spike"):
        kind = "failed" if detector == "error_spike" else "were refused"
        return (f"{extra.get('bad', 0):,.0f} of {extra.get('n', 0):,.0f} calls by {who} {kind} "
                f"{span} ({actual:.0%} against a usual {expected:.1%})" + _causes_text(causes)
                + ("; check the provider status and the request." if detector == "error_spike"
                   else "; check the key's limits and budget."))
    return f"{detector} for {who} {span}."


def scan(con, since: datetime, until: datetime, thresholds: Thresholds | None = None,
         detectors: Iterable[str] | None = None, budget_caps: list[dict[str, Any]] | None = None,
         root_causes: bool = True) -> list[Finding]:
    """Run the detectors over ``[since, until)`` (history read ``lookback_days`` before)
    and return findings sorted by impact. ``budget_caps`` (from :mod:`.policies`) adds
    budget-exhaustion forecasts. Called by the CLI, the notebook and the benchmark."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nan-medians of empty history
        return _scan(con, since, until, thresholds or Thresholds(), detectors, budget_caps,
                     root_causes)


def _scan(con, since: datetime, until: datetime, th: Thresholds, detectors: Iterable[str] | None,
          budget_caps: list[dict[str, Any]] | None, root_causes: bool) -> list[Finding]:
    want = set(detectors or DETECTORS)
    since = since.astimezone(timezone.utc)
    until = until.astimezone(timezone.utc)
    start = since - timedelta(days=th.lookback_days)
    hw = load_hourly(con, start, until)
    s0 = int(since.timestamp() // HOUR) - hw.h0
    scan_slice = slice(max(s0, 0), hw.spend.shape[1])
    raw: list[dict[str, Any]] = []
    if hw.keys and scan_slice.stop > scan_slice.start:
        if want & {"spend_spike", "spend_drop"}:
            raw += spend_findings(hw, scan_slice, th)
        if "level_shift" in want:
            raw += level_findings(hw, scan_slice, th)
        if want & {"error_spike", "refusal_spike"}:
            raw += rate_findings(hw, scan_slice, th)
    if "runaway_loop" in want:
        raw += loop_findings(con, since, until, th)
    if "new_model" in want:
        raw += new_model_findings(con, since, until, th)
    ents = {key: e for key, e in zip(hw.keys, hw.entity)}
    findings: list[Finding] = []
    table = "ev"
    # the rows root causes (and the mix test of spikes) read, once, not the warehouse per
    # finding
    if raw and (root_causes or any(r.get("needs_mix") for r in raw)):
        keys = sorted({hw.keys[r["k"]] if "k" in r else r["key"] for r in raw})
        con.execute("CREATE OR REPLACE TEMP TABLE rc_rows AS SELECT entity_key, start_time, "
                    "cost_usd, model, notebook_path, cell_id, prompt_hash, client, status, "
                    "error_type, is_error, is_refusal FROM ev WHERE start_time >= ? AND "
                    "start_time < ? AND entity_key IN (SELECT unnest(?))",
                    [min(r["start"] for r in raw)
                     - timedelta(days=max(7, th.level_days_reference)),
                     until, keys])
        table = "rc_rows"
    for r in raw:
        if r["detector"] not in want:
            continue
        key = hw.keys[r["k"]] if "k" in r else r["key"]
        entity = ents.get(key) or {"key_id": key, "user": None, "team": None, "project": None}
        causes: list[Cause] = []
        if r.get("needs_mix"):  # inside the key's burstiness: only a changed mix is news
            causes = root_cause(con, key, r["start"], r["end"], table=table)
            if not any(c.contribution >= th.spike_mix_share for c in causes
                       if c.dimension in ("model", "notebook")):
                continue
        if root_causes:
            if r["detector"] == "spend_spike":
                causes = causes or root_cause(con, key, r["start"], r["end"], table=table)
            elif r["detector"] == "level_shift":
                causes = root_cause(con, key, r["start"], r["end"], table=table,
                                    lookback_days=th.level_days_reference,
                                    dimensions=("model", "notebook", "client"))
            elif r["detector"] in ("error_spike", "refusal_spike"):
                cond = "is_error" if r["detector"] == "error_spike" else "is_refusal"
                causes = root_cause(con, key, r["start"], r["end"], measure=f"CAST({cond} AS INT)",
                                    dimensions=("status", "model", "notebook", "client"),
                                    table=table)
            elif r["detector"] == "runaway_loop":
                prompt = str(r["prompt"]).replace("'", "''")
                causes = [Cause("prompt", r["prompt"], 1.0)] + [
                    c for c in root_cause(con, key, r["start"], r["end"], measure="1",
                                          where=f"prompt_hash = '{prompt}'", table=table)
                    if c.dimension != "prompt"]
            elif r["detector"] == "new_model":
                causes = [Cause("model", r["model"], 1.0)] + [
                    c for c in root_cause(con, key, r["start"], r["end"], table=table)
                    if c.dimension in ("notebook", "cell", "client")][:2]
        sentence = explain(r["detector"], entity, r["start"], r["end"], r["actual"],
                           r["expected"], r["unit"], causes, r)
        findings.append(Finding(
            detector=r["detector"], entity=dict(entity), start=iso(r["start"]),
            end=iso(r["end"]), actual=r["actual"], expected=r["expected"], lower=r["lower"],
            upper=r["upper"], score=r["score"], impact_usd=r["impact_usd"],
            root_cause=causes, explanation=sentence, unit=r["unit"]))
    if budget_caps and "budget_exhaustion" in want:
        from .budgets import exhaustion_findings
        findings += exhaustion_findings(con, budget_caps, until)
    findings.sort(key=lambda f: (-abs(f.impact_usd), -f.score))
    return findings


def series(con, key: str, since: datetime, until: datetime, thresholds: Thresholds | None = None,
           findings: Iterable[Finding] = ()):
    """Hourly ``actual`` spend of one key with the spike detector's ``expected`` and band
    (``lower``/``upper`` for one hour) over ``[since, until)``, and ``flag`` on hours inside
    a finding of that key: what the ``anomaly_detection`` notebook plots."""
    import polars as pl

    th = thresholds or Thresholds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        hw = load_hourly(con, since.astimezone(timezone.utc) - timedelta(days=th.lookback_days),
                         until.astimezone(timezone.utc))
        if key not in hw.keys:
            return pl.DataFrame()
        s0 = int(since.timestamp() // HOUR) - hw.h0
        scan_slice = slice(max(s0, 0), hw.spend.shape[1])
        exp = baseline(hw.spend, hw, scan_slice, th)
    k = hw.keys.index(key)
    calls = hw.calls[k, : scan_slice.stop].sum()
    ec2 = hw.sq[k, : scan_slice.stop].sum() / max(calls, 1)
    mean_cost = hw.spend[k, : scan_slice.stop].sum() / max(calls, 1)
    e = exp[k]
    sd = np.sqrt(e / max(mean_cost, 1e-9) * ec2 + (th.overdispersion * e) ** 2)
    hours = [_t(hw, scan_slice.start + i) for i in range(len(e))]
    spans = [(datetime.fromisoformat(f.start.replace("Z", "+00:00")),
              datetime.fromisoformat(f.end.replace("Z", "+00:00")))
             for f in findings if f.entity.get("key_id") == key]
    flag = [any(a <= h < b for a, b in spans) for h in hours]
    return pl.DataFrame({"hour": hours, "actual": hw.spend[k, scan_slice], "expected": e,
                         "lower": np.maximum(e - 3 * sd, 0), "upper": e + 3 * sd, "flag": flag})
