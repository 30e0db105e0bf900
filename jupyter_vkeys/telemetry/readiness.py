"""Readiness of one gateway (``GET {prefix}/api/ready``), distinct from liveness.

:func:`check` is called by the ready handler on each probe. A gateway is ready
while it holds its data directory's lock, its key registry is loaded, its
journal can be written, its warehouse writer process is alive and, with replicas,
its shared state (Redis) and registry (PostgreSQL) answer; otherwise the
probe answers 503 naming every failing part. ``/api/health`` stays the cheap
liveness probe.

The sink restarts a dead writer within a quarter second (one that keeps dying, after a
doubling delay up to 30 s). A writer counts as
alive only once the same process has been running for
``c.VKeysGateway.ready_writer_grace`` seconds, so a writer that dies at every
start (a crash loop) keeps the gateway unready instead of flapping.
"""

from __future__ import annotations

import os
import time

from .view import GatewayView


__all__ = ["Readiness"]


class Readiness:
    """The probe's memory: which writer process it saw, and since when."""

    def __init__(self, grace: float = 2.0) -> None:
        self.grace = grace
        self._writer_pid: int | None = None
        self._writer_seen = 0.0

    def baseline(self, gateway: GatewayView) -> None:
        """Note the writer started with the gateway (called once it has started), so the
        first probe does not wait for the grace period."""
        writer = getattr(gateway.sink, "writer", None)
        if writer is not None:
            self._writer_pid, self._writer_seen = writer.pid, time.monotonic() - self.grace

    def check(self, gateway: GatewayView) -> dict[str, str]:
        """``{part: what is wrong}`` for every failing part (empty: ready)."""
        failing: dict[str, str] = {}
        lock = gateway.lock
        if lock is None or not lock.held:
            failing["data_dir"] = "the gateway does not hold its data directory's lock"
        elif not os.path.isdir(gateway.data_dir):
            failing["data_dir"] = f"the data directory {gateway.data_dir} is gone"
        if gateway.registry is None:
            failing["registry"] = "the key registry is not loaded"
        shared = getattr(gateway, "shared", None)
        if shared is not None and not shared.reachable:
            failing["shared_state"] = f"the shared state at {shared.where} is unreachable"
        sync = getattr(gateway, "registry_sync", None)
        if sync is not None and not sync.connected:
            failing["registry"] = "the shared key registry (PostgreSQL) is unreachable"
        if gateway.warehouse:
            self._check_warehouse(gateway, failing)
        return failing

    def _check_warehouse(self, gateway: GatewayView, failing: dict[str, str]) -> None:
        sink = gateway.sink
        journal = getattr(sink, "journal", None)
        if journal is None:
            failing["journal"] = "the warehouse journal is not open"
        else:
            syncer = getattr(journal, "_syncer", None)
            if not os.access(journal.directory, os.W_OK | os.X_OK):
                failing["journal"] = f"the journal directory {journal.directory} is not writable"
            elif syncer is not None and not syncer.is_alive():
                failing["journal"] = "the journal's fsync thread has stopped"
            else:
                for segment in list(getattr(journal, "_segments", {}).values()):
                    try:
                        os.fstat(segment.fd)
                    except OSError as exc:
                        failing["journal"] = f"a journal segment cannot be written ({exc})"
                        break
        writer = getattr(sink, "writer", None)
        now = time.monotonic()
        if writer is None:
            failing["writer"] = "the warehouse writer process was never started"
        elif writer.poll() is not None:
            failing["writer"] = (f"the warehouse writer process (pid {writer.pid}) exited with "
                                 f"{writer.returncode}")
            self._writer_pid = None
        else:
            if writer.pid != self._writer_pid:
                self._writer_pid, self._writer_seen = writer.pid, now
            if now - self._writer_seen < self.grace:
                failing["writer"] = (f"the warehouse writer process (pid {writer.pid}) was "
                                     f"restarted {now - self._writer_seen:.1f} s ago")
