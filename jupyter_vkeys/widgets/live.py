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
from collections.abc import Callable

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
        """A thread ticks and has not been told to stop."""
        return (self._thread is not None and self._thread.is_alive()
                and not self._stop.is_set())

    def start(self) -> None:
        """Start ticking (idempotent). A thread told to stop finishes its tick and ends;
        a new one, with its own stop flag, takes over."""
        if self.running:
            return
        self._stop = stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stop,),
                                        name="vkeys-live-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking (idempotent); a tick in progress finishes."""
        self._stop.set()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                self.tick()
            except Exception:  # a view must never die of one failed refresh
                log.exception("jupyter-vkeys: live refresh failed")
