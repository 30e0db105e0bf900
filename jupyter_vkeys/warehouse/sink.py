"""The gateway's side of the warehouse: journal every call, roll to Parquet, recover.

:class:`WarehouseSink` is the gateway's event sink. The data plane calls
:meth:`~WarehouseSink.hold` when a call is admitted (its worst-case cost, so a
crash mid-call is charged, not forgotten) and :meth:`~WarehouseSink.emit` once
when it ends, before the client receives the end of the response. The store
calls :meth:`~WarehouseSink.audit` for every admin action.

At start-up, :meth:`~WarehouseSink.open` converts what a previous process left
in the journal (holds with no final event become ``lost`` events charged at
their hold) and :meth:`~WarehouseSink.rebuild_spend` gives the policy engine
the spend of every current window, so a restart neither forgets spend nor
counts it twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from .journal import Journal
from .parquet import compact_partition, convert_segment, read_segment, snapshot
from .schema import SCHEMA_VERSION

log = logging.getLogger("jupyter_vkeys.warehouse")


class WarehouseSink:
    """Journal + Parquet writer of one gateway process."""

    def __init__(self, root: Path, *, roll_seconds: float = 10.0, segment_bytes: int = 64 << 20,
                 fsync_interval: float = 1.0, hash_notebook_paths: bool = False,
                 retention_days: int = 0, keep_recent: int = 1000) -> None:
        self.root = Path(root)
        self.roll_seconds = roll_seconds
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.hash_notebook_paths = hash_notebook_paths
        self.retention_days = retention_days
        self.keep = keep_recent
        self.events: list[dict[str, Any]] = []
        self.open_holds: dict[str, dict[str, Any]] = {}
        self.journal: Journal | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="vkeys-parquet")
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.lost_on_recovery = 0

    # -- lifecycle -----------------------------------------------------------------
    def open(self) -> None:
        """Recover what a previous process left, then open the journal. Called at start-up."""
        (self.root / "journal").mkdir(parents=True, exist_ok=True)
        self._recover()
        self.journal = Journal(self.root / "journal", segment_bytes=self.segment_bytes,
                               fsync_interval=self.fsync_interval, on_closed=self._convert_later)
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if self._loop is not None:
            self._timer = self._loop.call_later(min(self.roll_seconds, 1.0), self._tick)
        self._executor.submit(self._maintain)

    def close(self) -> None:
        """Roll and convert everything; called at gateway shutdown."""
        if self._timer is not None:
            self._timer.cancel()
        if self.journal is not None:
            self.journal.close()
        self._executor.shutdown(wait=True)

    # -- called by the gateway -------------------------------------------------------
    def hold(self, row: dict[str, Any]) -> None:
        """Journal an admitted call's hold (``status="hold"``, ``cost_pico`` = hold)."""
        self.open_holds[row["request_id"]] = row
        self.journal.append("events", row)

    def emit(self, event: dict[str, Any]) -> None:
        """Journal one finished call (written to the OS before the response ends)."""
        self.open_holds.pop(event["request_id"], None)
        if self.hash_notebook_paths and event.get("notebook_path"):
            event["notebook_path"] = hashlib.sha256(
                event["notebook_path"].encode()).hexdigest()[:16]
        self.journal.append("events", event)
        self.events.append(event)
        if len(self.events) > self.keep * 2:
            del self.events[:-self.keep]

    def audit(self, row: dict[str, Any]) -> None:
        """Journal one admin action (from the store's audit trail)."""
        if self.journal is not None:
            self.journal.append("audit", {"schema_version": SCHEMA_VERSION, **row})

    def flush(self) -> None:
        """Roll the open segments now (tests and ``jupyter vkeys`` maintenance)."""
        for dataset in ("events", "audit"):
            self._roll(dataset)

    def wait_converted(self) -> None:
        """Block until every queued conversion ran (tests, benchmarks)."""
        self._executor.submit(lambda: None).result()

    # -- internals -------------------------------------------------------------------
    def _roll(self, dataset: str) -> None:
        if self.journal.roll(dataset) is not None and dataset == "events" and self.open_holds:
            # Holds of calls still in flight move to the new segment, so a crash
            # after the old segment's conversion still finds them.
            self.journal.append_many("events", list(self.open_holds.values()))

    def _tick(self) -> None:
        for dataset in ("events", "audit"):
            if self.journal.age(dataset) >= self.roll_seconds:
                self._roll(dataset)
        self._timer = self._loop.call_later(min(self.roll_seconds, 1.0), self._tick)

    def _convert_later(self, path: Path) -> None:
        self._executor.submit(self._convert, path)

    def _convert(self, path: Path) -> None:
        try:
            convert_segment(path, self.root)
        except Exception:  # keep the segment: the next start-up retries it
            log.exception("could not convert journal segment %s to Parquet", path.name)

    def _recover(self) -> None:
        journal_dir = self.root / "journal"
        segments = sorted(journal_dir.glob("events-*.jsonl"))
        holds: dict[str, dict[str, Any]] = {}
        finished: set[str] = set()
        for path in segments:
            table = read_segment(path, "events")
            for row in table.select(["request_id", "status"]).to_pylist():
                if row["status"] != "hold":
                    finished.add(row["request_id"])
            for row in table.filter(pc.equal(table["status"], "hold")).to_pylist():
                holds[row["request_id"]] = row
        lost = [self._lost(row) for rid, row in holds.items() if rid not in finished]
        if lost:
            recovery = Journal(journal_dir, fsync_interval=3600)
            recovery.append_many("events", lost)
            recovery.close()
            log.warning("recovered %d calls that were in flight when the gateway stopped; each "
                        "is charged its hold (status 'lost')", len(lost))
        self.lost_on_recovery = len(lost)
        for path in sorted(journal_dir.glob("*.jsonl")):
            convert_segment(path, self.root)

    @staticmethod
    def _lost(hold: dict[str, Any]) -> dict[str, Any]:
        row = {k: v for k, v in hold.items() if v is not None}
        row.update(status="lost", http_status=0, error_type="gateway_stopped",
                   error_message="the gateway stopped before this call ended; charged its hold",
                   cost_usd=hold["cost_pico"] / 1e12, pricing_status="hold",
                   end_time=time.time())
        return row

    def _maintain(self) -> None:
        """Compact past days and apply retention (runs on the writer thread)."""
        try:
            today = datetime.now(timezone.utc).date()
            for dataset in ("events", "audit"):
                for partition in sorted((self.root / dataset).glob("date=*")):
                    day = datetime.strptime(partition.name[5:], "%Y-%m-%d").date()
                    if self.retention_days and day < today - timedelta(days=self.retention_days):
                        shutil.rmtree(partition, ignore_errors=True)
                    elif day < today:
                        compact_partition(partition)
        except Exception:
            log.exception("warehouse maintenance failed")

    def rebuild_spend(self, window_starts: dict[str, float]) -> list[tuple[dict, dict[str, int]]]:
        """Spend per key path in each current window, from the Parquet files.

        Returns ``[(path, {period: pico})]`` where ``path`` has ``key_id``,
        ``parent_key_id``, ``user``, ``team``, ``project``.
        """
        import duckdb

        files = snapshot(self.root, "events").parquet
        if not files:
            return []
        listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
        filters = ", ".join(
            f"COALESCE(SUM(cost_pico) FILTER (WHERE epoch_us(start_time) >= "
            f"{int(start * 1e6)}), 0)::BIGINT AS {period}" for period, start in
            window_starts.items())
        con = duckdb.connect()
        rows = con.execute(
            f"SELECT key_id, parent_key_id, \"user\", team, project, {filters} "
            f"FROM read_parquet([{listing}]) WHERE cost_pico > 0 GROUP BY ALL").fetchall()
        con.close()
        periods = list(window_starts)
        return [({"key_id": r[0], "parent_key_id": r[1], "user": r[2], "team": r[3],
                  "project": r[4]}, dict(zip(periods, r[5:]))) for r in rows]
