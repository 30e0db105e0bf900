"""How long to hold a rate refusal before answering it: pacing clients that ignore it.

A client that retries a 429 at once, in a loop, costs the gateway a refusal per
loop turn: measured here, four such connections refusing about 5,000 calls a
second made every other key's calls 4-5x slower. SDKs honour ``retry-after``;
a client that comes back within a second of its key's previous rate refusal
does not, and its next refusal is answered only after the wait it was told
(at least 0.25 s, at most ``max_delay``). A closed-loop client then sends a few
calls a second instead of thousands. The first refusal is never delayed.

Used by :class:`.proxy.ProxyCall` for ``refused_rate`` outcomes (RPM, TPM,
concurrency); the gateway owns one :class:`RefusalPacer`.
"""

from __future__ import annotations

import time
from typing import Callable

_REPEAT_WINDOW = 1.0  # a refusal this soon after the key's previous one is a repeat
_MIN_DELAY = 0.25
_MAX_TRACKED = 10_000


class RefusalPacer:
    """Remembers each key's last rate refusal and says how long to hold the next one."""

    def __init__(self, max_delay: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_delay = max_delay
        self.clock = clock
        self._last: dict[str, float] = {}

    def delay(self, key_id: str, retry_after: float | None) -> float:
        """Seconds to hold the refusal of ``key_id`` now being made (0: answer at once).
        ``retry_after`` is what the refusal tells the client to wait."""
        if self.max_delay <= 0:
            return 0.0
        now = self.clock()
        last = self._last.get(key_id)  # when the key's previous refusal was answered
        if last is None or now - last > _REPEAT_WINDOW:
            hold = 0.0
        else:
            wait = retry_after if retry_after is not None else self.max_delay
            hold = min(self.max_delay, max(wait, _MIN_DELAY))
        self._last[key_id] = now + hold
        if len(self._last) > _MAX_TRACKED:
            self._forget(now)
        return hold

    def _forget(self, now: float) -> None:
        self._last = {key: at for key, at in self._last.items() if now - at <= _REPEAT_WINDOW}
