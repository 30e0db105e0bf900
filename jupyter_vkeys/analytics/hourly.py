"""Hourly matrices of the warehouse per entity key, and their hour-of-week shape: what
the hour-based detectors (:mod:`.detectors`, :mod:`.level_shift`) judge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from .thresholds import Thresholds

HOUR = 3600
WEEK_H = 168


@dataclass
class Hourly:
    """Per-key hourly aggregates over ``[h0, h0 + hours)`` (epoch hours)."""

    keys: list[str]
    entity: list[dict[str, Any]]
    team: np.ndarray        # key -> team index
    h0: int
    spend: np.ndarray       # key x hour, USD
    calls: np.ndarray
    errors: np.ndarray
    refusals: np.ndarray
    sq: np.ndarray          # key x hour, sum of squared call cost
    first: np.ndarray       # key -> first hour index with a call (within the range)


def load_hourly(con, start: datetime, end: datetime) -> Hourly:
    """Aggregate ``ev`` per entity key and hour (one DuckDB query) into matrices."""
    h0 = int(start.timestamp() // HOUR)
    hours = int(-(-end.timestamp() // HOUR)) - h0
    rows = con.execute("""
        SELECT entity_key, CAST(epoch(hour) AS BIGINT) // 3600 AS h,
               coalesce(sum(cost_usd), 0) AS spend, count(*) AS calls,
               count(*) FILTER (is_error) AS errors, count(*) FILTER (is_refusal) AS refusals,
               coalesce(sum(cost_usd * cost_usd), 0) AS sq
        FROM ev WHERE start_time >= ? AND start_time < ? AND entity_key IS NOT NULL
        GROUP BY ALL""", [start, end]).fetchnumpy()
    keys, kidx = np.unique(rows["entity_key"].astype(str), return_inverse=True) \
        if len(rows["entity_key"]) else (np.array([], str), np.array([], int))
    k = len(keys)
    hidx = rows["h"].astype(np.int64) - h0
    ok = (hidx >= 0) & (hidx < hours)
    mats = []
    for name in ("spend", "calls", "errors", "refusals", "sq"):
        m = np.zeros((k, max(hours, 0)))
        np.add.at(m, (kidx[ok], hidx[ok]), np.asarray(rows[name], float)[ok])
        mats.append(m)
    spend, calls, errors, refusals, sq = mats
    active = calls > 0
    first = np.where(active.any(axis=1), active.argmax(axis=1), hours)
    meta = {r[0]: r[1:] for r in con.execute("""
        SELECT entity_key, arg_max("user", start_time), arg_max(team, start_time),
               arg_max(project, start_time)
        FROM ev WHERE start_time >= ? AND start_time < ? AND entity_key IS NOT NULL
        GROUP BY 1""", [start, end]).fetchall()}
    entity = [{"key_id": key, "user": meta.get(key, (None,) * 3)[0],
               "team": meta.get(key, (None,) * 3)[1], "project": meta.get(key, (None,) * 3)[2]}
              for key in keys]
    teams = {t: i for i, t in enumerate(sorted({str(e["team"]) for e in entity}))}
    team = np.array([teams[str(e["team"])] for e in entity], int)
    return Hourly(list(keys), entity, team, h0, spend, calls, errors, refusals, sq, first)


def _rolling(m: np.ndarray, w: int) -> np.ndarray:
    """Sums over the ``w`` hours ending at each hour (shorter at the start)."""
    c = np.cumsum(m, axis=1)
    out = c.copy()
    out[:, w:] = c[:, w:] - c[:, :-w]
    return out


def _how(h0: int, n: int) -> np.ndarray:
    """Hour of week (0 = Monday 00:00 UTC) of hours ``h0 .. h0 + n - 1``."""
    return (np.arange(h0, h0 + n) + 72) % WEEK_H  # epoch hour 0 was a Thursday


def _bins(how: np.ndarray) -> np.ndarray:
    """Hour of week -> one of 48 bins: weekday or weekend (UTC) x hour of day. Pooling the
    five weekdays gives each bin five times the samples of a raw hour-of-week."""
    return (how // 24 >= 5) * 24 + how % 24


def _shape(m: np.ndarray, hw: Hourly, hist: slice, th: Thresholds) -> np.ndarray:
    """Hour-of-week shape (key x 168, mean 1): the key's own profile (weekday/weekend x
    hour of day, smoothed over neighbouring hours) shrunk toward its team's."""
    seg = m[:, hist]
    bins = _bins(_how(hw.h0 + hist.start, seg.shape[1]))
    idx = np.arange(hist.start, hist.stop)
    alive = idx[None, :] >= hw.first[:, None]
    sums = np.zeros((m.shape[0], 48))
    seen = np.zeros((m.shape[0], 48))
    for j in range(48):
        cols = bins == j
        sums[:, j] = (seg[:, cols] * alive[:, cols]).sum(axis=1)
        seen[:, j] = alive[:, cols].sum(axis=1)
    with np.errstate(all="ignore"):
        own = np.where(seen > 0, sums / np.maximum(seen, 1), np.nan)
        fill = np.nanmean(own, axis=1, keepdims=True)
    own = np.nan_to_num(np.where(np.isnan(own), fill, own))
    smooth = own.copy()
    for half in (slice(0, 24), slice(24, 48)):
        x = own[:, half]
        smooth[:, half] = 0.5 * x + 0.25 * (np.roll(x, 1, axis=1) + np.roll(x, -1, axis=1))
    week = smooth[:, _bins(np.arange(WEEK_H))]
    mean = week.mean(axis=1, keepdims=True)
    own_n = np.where(mean > 0, week / np.where(mean > 0, mean, 1), 1.0)
    days = alive.sum(axis=1) / 24.0
    team = np.ones_like(own_n)
    for t in np.unique(hw.team):
        members = (hw.team == t) & (days >= 1)
        if members.any():
            weights = days[members][:, None]
            team[hw.team == t] = (own_n[members] * weights).sum(axis=0) / weights.sum()
    w = (days / (days + th.shape_prior_days))[:, None]
    shape = w * own_n + (1 - w) * team
    return shape / np.maximum(shape.mean(axis=1, keepdims=True), 1e-12)
