"""The append-only journal: JSON lines written to the OS before a response ends.

The gateway appends one line per event (and per budget hold, and per admin
action) with a single ``os.write`` on the event loop: no buffering in the
process, so a killed process loses nothing the OS has. ``fsync`` runs on a
background thread every ``fsync_interval`` seconds, never on the loop.

An open segment is ``<dataset>-<segment id>.open``; rolling it (by size, or by
age on the sink's timer) hands it to the background thread, which fsyncs,
closes and renames it to ``.jsonl``: the signal for the Parquet writer process
that it is complete. Segment ids are the microsecond time of creation, so they
grow across restarts. Nothing here imports pyarrow or DuckDB: the gateway
process stays small.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("jupyter_vkeys.warehouse")

OPEN_SUFFIX = ".open"
CLOSED_SUFFIX = ".jsonl"


_INT64 = (-(2**63), 2**63 - 1)


def _plain(value: Any) -> Any:
    """``value`` reduced to what a journal line can always hold: int64 integers, finite
    floats, strings, booleans and None (containers become their JSON text, or ``repr``)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return min(max(value, _INT64[0]), _INT64[1])
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    try:
        return orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        return repr(value)[:2000]


def encode_row(row: dict[str, Any]) -> bytes:
    """One row as a JSON line. Never raises: a row orjson cannot encode (an integer past
    64 bits, JSON nested past 255 levels, an odd type) is written with each offending
    value reduced by :func:`_plain` (and a warning logged), so a recorded call is never
    lost to its own contents."""
    try:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    except (TypeError, orjson.JSONEncodeError) as exc:
        log.warning("journal: row %s written with values reduced (%s)",
                    row.get("request_id") or row.get("event_id") or "?", exc)
        clean = {str(k): _plain(v) for k, v in row.items()}
        return orjson.dumps(clean, option=orjson.OPT_APPEND_NEWLINE)


def segment_id_of(path: Path) -> str:
    """The segment id in a journal file name (``events-00017000000000000.jsonl``)."""
    return path.stem.split("-", 1)[1]


class _Segment:
    __slots__ = ("dataset", "path", "fd", "size", "opened")

    def __init__(self, directory: Path, dataset: str, segment_id: str) -> None:
        self.dataset = dataset
        self.path = directory / f"{dataset}-{segment_id}{OPEN_SUFFIX}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = 0
        self.opened = time.monotonic()


class Journal:
    """Open journal segments of every dataset, with batched fsync off the loop.

    Created by the warehouse sink at gateway start-up; :meth:`append` is called
    on the event loop, :meth:`roll` by the sink's timer, :meth:`close` at shutdown.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20,
                 fsync_interval: float = 1.0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self._segments: dict[str, _Segment] = {}
        self._lock = threading.Lock()
        self._dirty: set[int] = set()
        self._closing: list[_Segment] = []
        self._wake = threading.Event()
        self._stop = False
        self._last_id = 0
        self._syncer = threading.Thread(target=self._sync_loop, name="vkeys-journal-fsync",
                                        daemon=True)
        self._syncer.start()

    def _new_id(self) -> str:
        now = time.time_ns() // 1000
        self._last_id = max(now, self._last_id + 1)
        return f"{self._last_id:017d}"

    def _segment(self, dataset: str) -> _Segment:
        segment = self._segments.get(dataset)
        if segment is None:
            segment = self._segments[dataset] = _Segment(self.directory, dataset, self._new_id())
        return segment

    def append(self, dataset: str, row: dict[str, Any]) -> None:
        """Write one row as a JSON line (one ``write`` to the OS; no fsync here)."""
        self.write(dataset, encode_row(row))

    def append_many(self, dataset: str, rows: list[dict[str, Any]]) -> None:
        """Write several rows with one ``write`` (carried-forward holds, recovery)."""
        if rows:
            self.write(dataset, b"".join(encode_row(r) for r in rows))

    def write(self, dataset: str, data: bytes) -> None:
        """Append already-encoded JSON lines."""
        segment = self._segment(dataset)
        os.write(segment.fd, data)
        segment.size += len(data)
        if segment.fd not in self._dirty:
            with self._lock:
                self._dirty.add(segment.fd)
        if segment.size >= self.segment_bytes:
            self.roll(dataset)

    def age(self, dataset: str) -> float:
        """Seconds since the open segment of ``dataset`` was created (0 if empty)."""
        segment = self._segments.get(dataset)
        return time.monotonic() - segment.opened if segment and segment.size else 0.0

    def roll(self, dataset: str) -> bool:
        """Hand the open segment of ``dataset`` to the background thread to fsync, close and
        rename to ``.jsonl``. Returns whether a segment was rolled."""
        segment = self._segments.pop(dataset, None)
        if segment is None:
            return False
        with self._lock:
            self._dirty.discard(segment.fd)
            self._closing.append(segment)
        self._wake.set()
        return True

    def _finish(self, segment: _Segment) -> None:
        os.fsync(segment.fd)
        os.close(segment.fd)
        if segment.size:
            os.replace(segment.path, segment.path.with_suffix(CLOSED_SUFFIX))
        else:
            segment.path.unlink(missing_ok=True)

    def sync(self) -> None:
        """fsync every segment written since the last sync; finish rolled segments.

        The lock guards only the hand-over of the sets: an fsync can take milliseconds,
        and the event loop must never wait for one. Only this thread closes journal fds,
        so an fd taken here stays valid until its fsync is done.
        """
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            closing, self._closing = self._closing, []
        for fd in dirty:
            os.fsync(fd)
        for segment in closing:
            self._finish(segment)

    def _sync_loop(self) -> None:
        while True:
            self._wake.wait(self.fsync_interval)
            self._wake.clear()
            self.sync()
            if self._stop:
                return

    def close(self) -> None:
        """Roll every dataset, finish them, and stop the background thread."""
        for dataset in list(self._segments):
            self.roll(dataset)
        self._stop = True
        self._wake.set()
        self._syncer.join(10)
        self.sync()
