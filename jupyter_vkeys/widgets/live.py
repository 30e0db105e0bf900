"""Refresh a view every few seconds while it is displayed.

:class:`LiveRefresh` is started by a view when the frontend first renders it
(``_repr_mimebundle_``) and stopped when the view is closed, its "live" box is
unticked, or the kernel shuts down (a daemon thread). Widget updates from a thread
are sent through the kernel's iopub thread, as ipywidgets' own progress-bar examples
do; the controllers hold a lock, so a click and a tick never interleave.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("jupyter_vkeys.widgets")

__all__ = ["LiveRefresh"]


class LiveRefresh:
    """Calls ``tick()`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, tick: Callable[[], None], interval: float = 5.0) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be more than 0 seconds, got {interval!r}")
        self.tick = tick
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start ticking (idempotent)."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vkeys-live-refresh",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking (idempotent); a tick in progress finishes."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # a view must never die of one failed refresh
                log.exception("jupyter-vkeys: live refresh failed")
