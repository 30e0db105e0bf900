"""The append-only journal: JSON lines written to the OS before a response ends.

The gateway appends one line per event (and per budget hold, and per admin
action) with a single ``os.write`` on the event loop: no buffering in the
process, so a killed process loses nothing the OS has. ``fsync`` runs on a
background thread every ``fsync_interval`` seconds, never on the loop.
Segments roll by size or age; a closed segment is handed to ``on_closed``
(the Parquet writer), which turns it into Parquet and deletes it.

Segment files are ``<dataset>-<segment id>.jsonl`` where the id is the
microsecond time of its creation, so ids grow across restarts.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import orjson

DATASETS = ("events", "audit")


def segment_id_of(path: Path) -> str:
    """The segment id in a journal file name (``events-0001700000000000.jsonl``)."""
    return path.stem.split("-", 1)[1]


def repair_tail(path: Path) -> None:
    """Cut a segment after its last complete line (a crash can leave half a line)."""
    size = path.stat().st_size
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(max(size - 1, 0))
        if f.read(1) == b"\n":
            return
        data = path.read_bytes()
        f.truncate(data.rfind(b"\n") + 1)


class _Segment:
    __slots__ = ("dataset", "path", "fd", "size", "opened")

    def __init__(self, directory: Path, dataset: str, segment_id: str) -> None:
        self.dataset = dataset
        self.path = directory / f"{dataset}-{segment_id}.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self.size = 0
        self.opened = time.monotonic()


class Journal:
    """Open journal segments of every dataset, with batched fsync.

    Created by the warehouse sink at gateway start-up; :meth:`append` is called
    on the event loop, :meth:`roll` by the sink's timer, :meth:`close` at shutdown.
    """

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20,
                 fsync_interval: float = 1.0,
                 on_closed: Callable[[Path], None] | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.fsync_interval = fsync_interval
        self.on_closed = on_closed
        self._segments: dict[str, _Segment] = {}
        self._lock = threading.Lock()
        self._dirty: set[int] = set()
        self._stop = threading.Event()
        self._last_id = 0
        self._syncer = threading.Thread(target=self._sync_loop, name="vkeys-journal-fsync",
                                        daemon=True)
        self._syncer.start()

    def _new_id(self) -> str:
        now = time.time_ns() // 1000
        self._last_id = max(now, self._last_id + 1)
        return f"{self._last_id:017d}"

    def append(self, dataset: str, row: dict[str, Any]) -> None:
        """Write one row as a JSON line (one ``write`` to the OS; no fsync here)."""
        line = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
        segment = self._segments.get(dataset)
        if segment is None:
            segment = self._segments[dataset] = _Segment(self.directory, dataset, self._new_id())
        os.write(segment.fd, line)
        segment.size += len(line)
        self._dirty.add(segment.fd)
        if segment.size >= self.segment_bytes:
            self.roll(dataset)

    def append_many(self, dataset: str, rows: list[dict[str, Any]]) -> None:
        """Write several rows with one ``write`` (used for carried-forward holds and replay)."""
        if not rows:
            return
        data = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)
        segment = self._segments.get(dataset)
        if segment is None:
            segment = self._segments[dataset] = _Segment(self.directory, dataset, self._new_id())
        os.write(segment.fd, data)
        segment.size += len(data)
        self._dirty.add(segment.fd)

    def age(self, dataset: str) -> float:
        """Seconds since the open segment of ``dataset`` was created (0 if none)."""
        segment = self._segments.get(dataset)
        return time.monotonic() - segment.opened if segment and segment.size else 0.0

    def roll(self, dataset: str) -> Path | None:
        """Close the open segment of ``dataset`` (fsynced) and hand it to ``on_closed``."""
        segment = self._segments.pop(dataset, None)
        if segment is None:
            return None
        with self._lock:
            os.fsync(segment.fd)
            os.close(segment.fd)
            self._dirty.discard(segment.fd)
        if segment.size == 0:
            segment.path.unlink(missing_ok=True)
            return None
        if self.on_closed is not None:
            self.on_closed(segment.path)
        return segment.path

    def closed_segments(self, dataset: str) -> list[Path]:
        """Segments on disk that are not open for writing, oldest first."""
        open_paths = {s.path for s in self._segments.values()}
        return sorted(p for p in self.directory.glob(f"{dataset}-*.jsonl") if p not in open_paths)

    def sync(self) -> None:
        """fsync every segment written since the last sync (the background thread's job)."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            for fd in dirty:
                try:
                    os.fsync(fd)
                except OSError:
                    pass  # closed by a roll in between: roll fsynced it already

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval):
            self.sync()

    def close(self) -> list[Path]:
        """Roll every dataset and stop the fsync thread; returns the closed segments."""
        closed = [p for p in (self.roll(d) for d in list(self._segments)) if p is not None]
        self._stop.set()
        self._syncer.join(5)
        return closed
