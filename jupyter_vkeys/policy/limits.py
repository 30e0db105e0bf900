"""Counters over time: a sliding 60-second window (RPM, TPM) and a budget window.

Owned by the engine, one set per scope. Everything here is synchronous and
runs on the event loop, so a check followed by an update is atomic.
"""

from __future__ import annotations

import math
from collections import deque

from .windows import window


class SlidingWindow:
    """Amounts added during the last ``span`` seconds, kept in one-second buckets.

    Memory is bounded by ``span`` buckets whatever the request rate (a log of every
    request would hold 60,000 entries at 1,000 req/s). An amount is stamped with the next
    whole second, so it leaves the window up to a second late, never early: a limit is
    never exceeded. Buckets are ``[second, amount, alive]`` lists, so a reservation made
    at admission can be corrected at settlement (:meth:`adjust`).
    """

    __slots__ = ("span", "entries", "total")

    def __init__(self, span: float = 60.0) -> None:
        self.span = span
        self.entries: deque[list] = deque()
        self.total = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.span
        entries = self.entries
        while entries and entries[0][0] <= horizon:
            entry = entries.popleft()
            entry[2] = False
            self.total -= entry[1]

    def used(self, now: float) -> int:
        """Sum of the amounts still inside the window at ``now``."""
        self._expire(now)
        return self.total

    def add(self, now: float, amount: int) -> list:
        """Record ``amount`` at ``now``; returns its bucket for a later :meth:`adjust`."""
        start = math.ceil(now)
        entries = self.entries
        if entries and entries[-1][0] == start:
            entry = entries[-1]
            entry[1] += amount
        else:
            entry = [start, amount, True]
            entries.append(entry)
        self.total += amount
        return entry

    def adjust(self, entry: list, reserved: int, actual: int) -> None:
        """Replace a reservation of ``reserved`` by ``actual`` (no-op once its bucket left)."""
        if entry[2]:
            entry[1] += actual - reserved
            self.total += actual - reserved

    def next_release(self, now: float) -> float:
        """Seconds until the oldest amount leaves the window (the full span if empty)."""
        self._expire(now)
        return self.entries[0][0] + self.span - now if self.entries else self.span

    def wait(self, now: float, need: int, limit: int) -> float:
        """Seconds until ``need`` more fits under ``limit`` (0 if it fits now)."""
        used = self.used(now)
        if used + need <= limit:
            return 0.0
        excess = used + need - limit
        for start, amount, _ in self.entries:
            excess -= amount
            if excess <= 0:
                return max(start + self.span - now, 0.001)
        return self.span  # needs more than the whole window: wait it out


class BudgetWindow:
    """Spend and holds of one budget in its current calendar window.

    ``generation`` changes when the window rolls over, so a hold placed in an
    old window is settled into nothing rather than into the new window.
    """

    __slots__ = ("period", "tz", "start", "end", "spent", "held", "generation", "warned")

    def __init__(self, period: str, tz) -> None:
        self.period = period
        self.tz = tz
        self.start = self.end = float("-inf")
        self.spent = 0
        self.held = 0
        self.generation = 0
        self.warned = False

    def roll(self, now: float) -> None:
        """Start a fresh window if ``now`` is past the current one."""
        if self.start <= now < self.end:
            return
        self.start, self.end = window(self.period, now, self.tz)
        self.spent = 0
        self.held = 0
        self.generation += 1
        self.warned = False
