"""The gateway's side of the warehouse: journal every call, recover, start the writer.

:class:`WarehouseSink` is the gateway's event sink. The data plane calls
:meth:`~WarehouseSink.hold` when a call is admitted (its worst-case cost,
journaled once the call has run for ``HOLD_DELAY``, so a crash mid-call is
charged, not forgotten) and :meth:`~WarehouseSink.emit` once
when it ends, before the client receives the end of the response. The store
calls :meth:`~WarehouseSink.audit` for every admin action.

At start-up, :meth:`~WarehouseSink.open` recovers what a previous process left
in the journal (holds with no final event become ``lost`` events charged at
their hold), runs the writer once to convert it and to sum the spend of every
current budget window (returned for the policy engine), then starts the writer
process that turns rolled segments into Parquet from then on. This module
imports no pyarrow or DuckDB: those live in the writer process.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import orjson

from .journal import CLOSED_SUFFIX, OPEN_SUFFIX, Journal
from .version import SCHEMA_VERSION

log = logging.getLogger("jupyter_vkeys.warehouse")

# Seconds a call stays in flight before its hold is journaled (a crash loses the holds of
# younger calls: at most this long of spend that no client saw completed).
HOLD_DELAY = 0.25
# A writer that keeps dying is restarted after 0.5, 1, 2 ... 30 s (the first at once);
# one that stayed up this long counts as healthy again.
WRITER_BACKOFF_MAX = 30.0
WRITER_STABLE_SECONDS = 60.0


class EventSink:
    """Where call events go: the interface every sink has, and the default when the
    warehouse is off (``c.VKeysGateway.warehouse = False``), which keeps the last
    ``keep`` events in memory (for ``/api/me`` and tests). :class:`WarehouseSink` also
    journals them."""

    def __init__(self, keep: int = 1000) -> None:
        self.keep = keep
        self.events: list[dict[str, Any]] = []

    def hold(self, request_id: str, started: float, row: Callable[[], dict[str, Any]]) -> None:
        """Called by the data plane when a call is admitted with a budget hold; ``row``
        builds the hold's journal row if the sink decides to write it."""

    def audit(self, row: dict[str, Any]) -> None:
        """Called by the store after each admin action is committed."""

    def emit(self, event: dict[str, Any]) -> None:
        """Called by the data plane once per call, before the response ends."""
        self.events.append(event)
        if len(self.events) > self.keep * 2:
            del self.events[:-self.keep]

    def close(self) -> None:
        """Flush and close; called at gateway shutdown."""


class WarehouseSink(EventSink):
    """Journal of one gateway process, plus its Parquet writer child process."""

    def __init__(self, root: Path, *, roll_seconds: float = 10.0, segment_bytes: int = 64 << 20,
                 fsync_interval: float = 1.0, hash_notebook_paths: bool = False,
                 retention_days: int = 0, keep_recent: int = 1000, bucket: str = "",
                 replica: str = "") -> None:
        self.root = Path(root)
        # an s3:// URL the writer copies Parquet files to, under this replica's name
        self.bucket_args = ["--bucket", bucket, "--replica", replica] if bucket else []
        self.roll_seconds = roll_seconds
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.hash_notebook_paths = hash_notebook_paths
        self.retention_days = retention_days
        super().__init__(keep_recent)
        self.open_holds: dict[str, dict[str, Any]] = {}  # journaled, call still in flight
        self.pending_holds: dict[str, tuple[float, Callable[[], dict[str, Any]]]] = {}
        self.journal: Journal | None = None
        self.writer: subprocess.Popen | None = None
        self._writer_started = time.monotonic()
        self._writer_failures = 0  # exits in a row, each within WRITER_STABLE_SECONDS
        self._writer_retry_at: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.lost_on_recovery = 0
        # Median output tokens per model over the last 30 days (read at start-up; dry runs)
        self.typical_output: dict[str, int] = {}

    # -- lifecycle -----------------------------------------------------------------
    def open(self, window_starts: dict[str, float]) -> list[dict[str, Any]]:
        """Recover, convert, start the writer; returns spend per key path and window.

        Called once by the gateway at start-up, on its event loop.
        """
        journal_dir = self.root / "journal"
        journal_dir.mkdir(parents=True, exist_ok=True)
        self._recover(journal_dir)
        spend = self._run_writer_once(window_starts)
        self.journal = Journal(journal_dir, segment_bytes=self.segment_bytes,
                               fsync_interval=self.fsync_interval)
        self.writer = subprocess.Popen(
            [sys.executable, "-m", "jupyter_vkeys.warehouse.writer", str(self.root),
             "--parent", str(os.getpid()), "--retention-days", str(self.retention_days),
             *self.bucket_args],
            stdin=subprocess.DEVNULL)
        try:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(HOLD_DELAY, self._tick, loop)
        except RuntimeError:
            pass  # no loop (CLI): segments roll at close
        return spend

    def close(self) -> None:
        """Roll everything and let the writer convert it; called at gateway shutdown."""
        if self._timer is not None:
            self._timer.cancel()
        if self.journal is not None:
            self.journal.close()
        if self.writer is not None and self.writer.poll() is None:
            self.writer.terminate()  # the writer converts what is left, then exits
            try:
                self.writer.wait(60)
            except subprocess.TimeoutExpired:
                self.writer.kill()
        if any((self.root / "journal").glob(f"*{CLOSED_SUFFIX}")):
            self._run_writer_once({})  # the writer was stopped before it could finish

    # -- called by the gateway -------------------------------------------------------
    def hold(self, request_id: str, started: float, row: Callable[[], dict[str, Any]]) -> None:
        """Note an admitted call's hold; journaled (``status="hold"``) once the call has been
        in flight for ``HOLD_DELAY`` seconds. Most calls end sooner and cost no write."""
        self.pending_holds[request_id] = (started, row)

    def emit(self, event: dict[str, Any]) -> None:
        """Journal one finished call (written to the OS before the response ends)."""
        if self.pending_holds.pop(event["request_id"], None) is None:
            self.open_holds.pop(event["request_id"], None)
        if self.hash_notebook_paths and event.get("notebook_path"):
            event["notebook_path"] = hashlib.sha256(
                event["notebook_path"].encode()).hexdigest()[:16]
        self.journal.append("events", event)
        super().emit(event)

    def audit(self, row: dict[str, Any]) -> None:
        """Journal one admin action (from the store's audit trail)."""
        if self.journal is not None:
            self.journal.append("audit", {"schema_version": SCHEMA_VERSION, **row})

    def flush(self) -> None:
        """Roll the open segments now (tests, maintenance)."""
        for dataset in ("events", "audit"):
            self._roll(dataset)

    def wait_converted(self, timeout: float = 30.0) -> None:
        """Block until the writer converted every rolled segment (tests, benchmarks)."""
        journal_dir = self.root / "journal"
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.journal.sync()
            if not any(journal_dir.glob(f"*{CLOSED_SUFFIX}")):
                return
            time.sleep(0.05)
        raise TimeoutError("the Parquet writer did not catch up")

    # -- internals -------------------------------------------------------------------
    def _roll(self, dataset: str) -> None:
        if self.journal.roll(dataset) and dataset == "events" and self.open_holds:
            # Holds of calls still in flight move to the new segment, so that a crash
            # after the old segment's conversion still finds them.
            self.journal.append_many("events", list(self.open_holds.values()))

    def _journal_holds(self) -> None:
        cutoff = time.time() - HOLD_DELAY
        due = [rid for rid, (started, _) in self.pending_holds.items() if started <= cutoff]
        if due:
            rows = []
            for rid in due:
                row = self.pending_holds.pop(rid)[1]()
                self.open_holds[rid] = row
                rows.append(row)
            self.journal.append_many("events", rows)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        self._journal_holds()
        for dataset in ("events", "audit"):
            if self.journal.age(dataset) >= self.roll_seconds:
                self._roll(dataset)
        if self.writer is not None and self.writer.poll() is not None:
            self._restart_writer()
        self._timer = loop.call_later(HOLD_DELAY, self._tick, loop)

    def _restart_writer(self) -> None:
        """Called by :meth:`_tick` while the writer is dead: restart it at once the first
        time, then after a delay that doubles with each quick exit (0.5 s .. 30 s), so a
        writer that cannot run (a broken install, a full disk) is not respawned four
        times a second. The journal keeps every event meanwhile."""
        now = time.monotonic()
        if self._writer_retry_at is None:  # just noticed
            if now - self._writer_started >= WRITER_STABLE_SECONDS:
                self._writer_failures = 0
            delay = 0.0 if self._writer_failures == 0 else \
                min(WRITER_BACKOFF_MAX, 0.5 * 2 ** (self._writer_failures - 1))
            self._writer_failures += 1
            self._writer_retry_at = now + delay
            log.error("the warehouse writer process exited (%s); restarting it%s",
                      self.writer.returncode, f" in {delay:g} s" if delay else "")
        if now >= self._writer_retry_at:
            self.writer = subprocess.Popen(self.writer.args, stdin=subprocess.DEVNULL)
            self._writer_started = now
            self._writer_retry_at = None

    def _run_writer_once(self, window_starts: dict[str, float]) -> list[dict[str, Any]]:
        if not any((self.root / "journal").glob(f"*{CLOSED_SUFFIX}")) and not any(
                (self.root / "events").glob("date=*/*.parquet")):
            return []  # a new warehouse: nothing to convert or sum
        result = subprocess.run(
            [sys.executable, "-m", "jupyter_vkeys.warehouse.writer", str(self.root), "--once",
             "--windows", json.dumps(window_starts), *self.bucket_args], capture_output=True,
            text=True)
        if result.returncode != 0:
            raise RuntimeError(f"warehouse recovery failed: {result.stderr[-2000:]}")
        found = json.loads(result.stdout or "[]")
        if isinstance(found, dict):  # {"spend": [...], "typical_output": {model: tokens}}
            self.typical_output = dict(found.get("typical_output") or {})
            return list(found.get("spend") or [])
        return found

    def _recover(self, journal_dir: Path) -> None:
        """Close what a killed process left open; turn orphaned holds into ``lost`` events."""
        leftovers = sorted(journal_dir.glob(f"events-*{OPEN_SUFFIX}")) + sorted(
            journal_dir.glob(f"events-*{CLOSED_SUFFIX}"))
        holds: dict[str, dict[str, Any]] = {}
        finished: set[str] = set()
        for path in leftovers:
            for line in path.read_bytes().split(b"\n"):
                try:
                    row = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a half-written last line
                if row.get("status") == "hold":
                    holds[row["request_id"]] = row
                else:
                    finished.add(row.get("request_id"))
        lost = [self._lost(row) for rid, row in holds.items() if rid not in finished]
        self.lost_on_recovery = len(lost)
        for path in journal_dir.glob(f"*{OPEN_SUFFIX}"):
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end < len(data):
                with open(path, "rb+") as f:
                    f.truncate(end)
            os.replace(path, path.with_suffix(CLOSED_SUFFIX))
        if lost:
            recovery = Journal(journal_dir, fsync_interval=3600)
            recovery.append_many("events", lost)
            recovery.close()
            log.warning("recovered %d calls that were in flight when the gateway stopped; each "
                        "is charged its hold (status 'lost')", len(lost))

    @staticmethod
    def _lost(hold: dict[str, Any]) -> dict[str, Any]:
        row = dict(hold)
        row.update(status="lost", http_status=0, error_type="gateway_stopped",
                   error_message="the gateway stopped before this call ended; charged its hold",
                   cost_usd=hold["cost_pico"] / 1e12, pricing_status="hold",
                   end_time=time.time())
        return row
