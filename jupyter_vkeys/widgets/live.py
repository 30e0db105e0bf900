"""Refresh a view every few seconds while it is displayed.

:class:`LiveRefresh` is started by a view when the frontend first renders it
(``_repr_mimebundle_``) and stopped when the view is closed, its "live" box is
unticked, or the kernel shuts down (a daemon thread). :class:`LiveView` is the part of
both views (``AdminPanel``, ``MyUsage``) that wires it: the "live" checkbox and the
frontend's count of the views on screen. Widget updates from a thread
are sent through the kernel's iopub thread, as ipywidgets' own progress-bar examples
do; the controllers hold a lock, so a click and a tick never interleave.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w

log = logging.getLogger("jupyter_vkeys.widgets")

__all__ = ["LiveRefresh", "LiveView"]


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


class LiveView:
    """Mixin of a widget view (before its ``ipywidgets`` base): refreshes live while at
    least one of its views is on screen and the "live" box is ticked.

    The view calls :meth:`_live_setup` in ``__init__`` (making ``self.live`` and
    ``self.live_box``, which it places in its toolbar) and :meth:`_watch_views` once its
    children are built.
    """

    live: LiveRefresh
    live_box: w.Checkbox

    def _live_setup(self, tick: Callable[[], None], interval: float,
                    layout: w.Layout) -> None:
        self.live = LiveRefresh(tick, interval)
        self.live_box = w.Checkbox(value=True, description="live", indent=False,
                                   layout=layout)
        self.live_box.observe(self._live_changed, names="value")

    def _watch_views(self) -> None:
        self._view_count = 0  # ask the frontend to count views (ipywidgets' own trait)
        self.observe(self._views_changed, names="_view_count")  # type: ignore[attr-defined]

    def _views_changed(self, change: dict[str, Any]) -> None:
        """The frontend counts this widget's views (``_view_count``): refresh live while
        at least one is on screen, stop when the last one is gone (output cleared,
        notebook closed)."""
        if (change["new"] or 0) > 0:
            if self.live_box.value:
                self.live.start()
        else:
            self.live.stop()

    def _live_changed(self, change: dict[str, Any]) -> None:
        (self.live.start if change["new"] else self.live.stop)()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Rendered by a frontend: start the live refresh (if ticked)."""
        if self.live_box.value:
            self.live.start()
        return super()._repr_mimebundle_(**kwargs)  # type: ignore[misc]

    def close(self) -> None:
        """Stop the live refresh and close every widget of the view."""
        self.live.stop()
        super().close()  # type: ignore[misc]
