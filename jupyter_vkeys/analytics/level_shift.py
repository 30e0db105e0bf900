"""The ``level_shift`` detector: a key whose spend stepped up and stayed up for days.

Called by :func:`.detectors.scan` (which attaches root causes and the sentence) once per
scan. A spike detector sees hours; a lasting change of level (a scheduled job added, a
notebook moved to a pricier model, a team doubled its use) hides in hour-to-hour noise
and, after a day or two, in the spike detector's own adapting baseline. This one works
on days:

- each day's *level* is its spend over what the key's hour-of-week shape (from the
  reference period, see :func:`.hourly._shape`) expects of a day like it, so a quiet
  weekend is no drop and a weekday no rise;
- the *reference* is the ``level_days_reference`` days before the last
  ``level_days_recent`` complete days; from it, the distribution of
  ``level_days_recent``-day mean levels, summarised robustly (median and the upper
  spread, 90th percentile minus median, in logs: one huge day moves it little);
- a shift is flagged when the recent mean level is above ``exp(median + level_z x
  spread)`` *and* the median of the recent days' levels is at least ``level_ratio`` times
  the reference's median day (most recent days are up, not one burst) *and* the excess
  is at least ``level_min_usd``.

One shift, one finding: a key that alerted is not judged again for
``level_cooldown_days`` (by then its reference holds the new level).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np

from .hourly import Hourly, _how, _shape
from .thresholds import Thresholds

HOUR = 3600


def level_findings(hw: Hourly, scan: slice, th: Thresholds) -> list[dict[str, Any]]:
    """Level shifts per key, judged at the end of every complete day of the scan.
    Returns raw findings (``k`` indexes ``hw.keys``) for :func:`.detectors.scan`."""

    recent_n, ref_n = th.level_days_recent, th.level_days_reference
    m = hw.calls if th.level_on_calls else hw.spend
    n_keys = m.shape[0]
    out: list[dict[str, Any]] = []
    quiet_until = np.full(n_keys, -1)
    first_end = scan.start + 24 - (hw.h0 + scan.start) % 24  # the first UTC midnight
    for end in range(first_end, scan.stop + 1, 24):
        r0 = end - 24 * recent_n
        ref = slice(max(0, r0 - 24 * ref_n), r0)
        if ref.stop - ref.start < 24 * th.level_min_reference_days:
            continue
        shape = _shape(m, hw, ref, th)
        starts = np.arange(ref.start, end, 24)
        starts = starts[starts + 24 <= end]
        totals = np.stack([m[:, a:a + 24].sum(axis=1) for a in starts], axis=1)
        usd = np.stack([hw.spend[:, a:a + 24].sum(axis=1) for a in starts], axis=1)
        expect = np.stack([shape[:, _how(hw.h0 + a, 24)].sum(axis=1) / 24.0 for a in starts],
                          axis=1)  # days of mean 1: a level is "days' worth"
        alive = hw.first[:, None] <= (starts[None, :] + 12)
        with np.errstate(all="ignore"):
            level = np.where(alive & (expect > 0), totals / np.maximum(expect, 1e-12), np.nan)
        is_ref = starts < r0
        ref_lv, rec_lv = level[:, is_ref], level[:, ~is_ref]
        ref_days = (~np.isnan(ref_lv)).sum(axis=1)
        active_days = ((ref_lv > 0) & ~np.isnan(ref_lv)).sum(axis=1)
        # recent_n-day mean levels across the reference
        blocks = np.stack([np.nanmean(ref_lv[:, i:i + recent_n], axis=1)
                           for i in range(max(ref_lv.shape[1] - recent_n + 1, 0))], axis=1) \
            if ref_lv.shape[1] >= recent_n else np.full((n_keys, 1), np.nan)
        with np.errstate(all="ignore"):
            logs = np.log(np.where(blocks > 0, blocks, np.nan))
            med = np.nanmedian(logs, axis=1)
            spread = np.maximum((np.nanquantile(logs, 0.9, axis=1) - med) / 1.2816,
                                th.level_min_sd)
            ref_median_day = np.nanmedian(ref_lv, axis=1)
            ref_mean_day = np.nanmean(ref_lv, axis=1)
            rec_mean = np.nanmean(rec_lv, axis=1)
            rec_median = np.nanmedian(rec_lv, axis=1)
        rec_usd = hw.spend[:, r0:end].sum(axis=1)
        # what the recent days would have cost at the reference's spend per unit of level
        with np.errstate(all="ignore"):
            usd_per_level = np.nansum(np.where(alive[:, is_ref], usd[:, is_ref], 0), axis=1) \
                / np.nansum(np.where(alive[:, is_ref], np.nan_to_num(ref_lv) * 1.0, 0), axis=1)
        exp_usd = np.nan_to_num(ref_mean_day * expect[:, ~is_ref].sum(axis=1)
                                * usd_per_level)
        flag = ((ref_days >= th.level_min_reference_days)
                & (active_days >= th.level_min_active_days)
                & (np.nan_to_num(rec_mean) > 0)
                & (np.log(np.maximum(np.nan_to_num(rec_mean), 1e-300)) > med + th.level_z * spread)
                & (np.nan_to_num(rec_median) >= th.level_ratio * np.nan_to_num(ref_median_day))
                & (np.nan_to_num(rec_median) > 0)
                & (rec_usd - np.nan_to_num(exp_usd) >= th.level_min_usd)
                & (quiet_until < end)
                & (hw.first < r0 - 24 * th.level_min_reference_days + 12))
        for k in np.flatnonzero(flag):
            expected = float(exp_usd[k])
            factor = float(np.exp(th.level_z * spread[k]))
            base = float(np.exp(med[k]) * expect[k, ~is_ref].sum() * usd_per_level[k])
            out.append(dict(
                detector="level_shift", k=int(k), start=_t(hw, r0), end=_t(hw, end),
                actual=float(rec_usd[k]), expected=expected, lower=base / factor,
                upper=base * factor,
                score=float((np.log(rec_mean[k]) - med[k]) / spread[k]),
                impact_usd=float(rec_usd[k]) - expected, unit="usd",
                ratio=float(rec_mean[k] / ref_mean_day[k]) if ref_mean_day[k] > 0 else None,
                per_day_usd=(float(rec_usd[k]) - expected) / recent_n, reference_days=ref_n))
            quiet_until[k] = end + 24 * th.level_cooldown_days
    return out


def _t(hw: Hourly, h: int) -> datetime:
    return datetime.fromtimestamp((hw.h0 + int(h)) * HOUR, timezone.utc)
