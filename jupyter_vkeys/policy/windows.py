"""Calendar-aligned budget windows (day, week, month) and the endless ``total`` pot.

Called by the ledger to know which window a spend belongs to and when it resets.
Windows align to midnight in the configured time zone (UTC by default); weeks
start on Monday.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo

FOREVER = float("inf")


def window(period: str, now: float, tz: tzinfo) -> tuple[float, float]:
    """``(start, end)`` in epoch seconds of the ``period`` window holding ``now``."""
    if period == "total":
        return 0.0, FOREVER
    local = datetime.fromtimestamp(now, tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = midnight, midnight + timedelta(days=1)
    elif period == "week":
        start = midnight - timedelta(days=local.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = midnight.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    # Re-attach the zone so DST changes inside the window land on local midnight.
    start = start.replace(tzinfo=None).replace(tzinfo=tz)
    end = end.replace(tzinfo=None).replace(tzinfo=tz)
    return start.timestamp(), end.timestamp()


def iso(ts: float) -> str | None:
    """RFC 3339 UTC text of an epoch time, or None for "never"."""
    if ts == FOREVER:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
