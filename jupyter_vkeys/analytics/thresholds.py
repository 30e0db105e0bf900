"""The anomaly detectors' settings (:class:`Thresholds`), read by every detector and by
``jupyter vkeys anomalies --set name=value``; defaults chosen with
``benchmarks/anomalies.py`` (figures in the README)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Iterable


@dataclass(frozen=True)
class Thresholds:
    """Detector settings; every field can be overridden (CLI ``--set name=value``)."""

    lookback_days: int = 28          # history read before the scanned period
    spike_window_hours: int = 3      # rolling window spikes are judged on
    spike_z: float = 5.0             # band width in standard deviations
    spike_ratio: float = 3.0         # and at least this many times the expectation
    spike_min_usd: float = 0.5       # and at least this much excess spend
    spike_day_ratio: float = 1.0     # and more than this many typical days' spend (p75 of
                                     # the last 14 days) within the window
    spike_burst_z: float = 3.5       # and above the key's usual busiest window of a day:
                                     # exp(median + z x robust sd) of the log daily maxima
    spike_mix_burst_z: float = 1.0   # or above this lower bar when one model or notebook
    spike_mix_share: float = 0.8     # carries at least this share of the excess (the mix
                                     # changed: not more of the usual work, other work)
    spike_min_calls: int = 20        # and at least this many calls (one huge prompt is no
                                     # spike of work)
    spike_burst_min_sd: float = 0.35  # floor of that robust sd (log scale)
    spike_burst_min_days: int = 5    # active days before a key's own burstiness is used
                                     # alone (younger keys borrow their team's spread)
    overdispersion: float = 0.5      # day-to-day variation of a key's level (CV)
    shape_prior_days: float = 14.0   # days of own history weighing as much as the team shape
    level_on_calls: int = 1          # judge levels on calls (1) or spend (0); calls are
                                     # far less heavy-tailed than the cost of a call
    level_days_recent: int = 3       # level shifts: the last days judged together
    level_days_reference: int = 14   # against this many days before them
    level_min_reference_days: int = 5  # days of reference a key needs
    level_min_active_days: int = 3   # of which with any spend
    level_z: float = 3.0             # recent mean level above exp(median + z x spread)
    level_min_sd: float = 0.25       # floor of that spread (log scale)
    level_ratio: float = 2.5         # and the recent median day this many reference days
    level_min_usd: float = 1.0       # and at least this much excess spend
    level_cooldown_days: int = 14    # one finding per shift: then the new level is normal
    drop_window_hours: int = 24
    drop_ratio: float = 0.1          # calls below this share of the expectation
    drop_min_expected_calls: float = 8.0
    drop_min_active_days: float = 0.95  # only keys active on this share of history days
    drop_max_daily_cv: float = 0.5   # and whose daily calls vary less than this (CV)
    drop_min_active_hours: float = 0.25  # and that called in this share of history hours
    loop_calls: int = 25
    loop_window_minutes: int = 15
    new_model_price_ratio: float = 3.0
    new_model_min_usd: float = 0.25
    new_model_min_history_days: float = 2.0
    rate_window_hours: int = 2
    rate_min_calls: int = 10
    rate_min: float = 0.25           # observed share of failed calls at least this
    rate_ratio: float = 3.0          # and this many times the key's usual rate
    rate_z: float = 4.0
    rate_prior_calls: float = 50.0   # fleet rate weighs as this many calls of the key's own

    def with_overrides(self, pairs: Iterable[str]) -> "Thresholds":
        """``["spike_z=4", ...]`` applied; ``ValueError`` naming an unknown or bad one."""
        types = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}
        for pair in pairs:
            name, _, text = pair.partition("=")
            name = name.strip().replace("-", "_")
            if name not in types:
                raise ValueError(f"unknown threshold {name!r}; known: {', '.join(types)}")
            try:
                value = int(text) if types[name] in ("int", int) else float(text)
            except ValueError:
                raise ValueError(f"threshold {name} needs a number, got {text!r}") from None
            if value < 0:
                raise ValueError(f"threshold {name} must not be negative (got {value})")
            changes[name] = value
        return replace(self, **changes)
