"""The Parquet writer process: ``python -m jupyter_vkeys.warehouse.writer ROOT``.

Started by the gateway's warehouse sink as a child process, so that pyarrow,
DuckDB and their memory stay out of the gateway process and Parquet encoding
never competes with the event loop for the GIL. It converts every complete
journal segment (``*.jsonl``) into Parquet, compacts past days and applies
retention, and exits (after converting what is left) when told to stop or
when its parent gateway is gone.

With ``--once`` it converts what is pending, prints the spend of every key
path in the given windows as JSON (the gateway's budget rebuild), and exits.

One writer works on a warehouse at a time (:func:`exclusive`, an ``flock`` on
``<root>/.writer.lock``): after a gateway is killed its writer, orphaned, converts what
is left before it exits, while the next gateway's ``--once`` rebuild starts; two
converters of one segment would share its staging folder and could delete each other's
files (rows lost). The lock is released when its holder exits, however it exits.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .journal import CLOSED_SUFFIX

# pyarrow and DuckDB are imported when first needed, so the writer starts (and
# answers SIGTERM) at once.

log = logging.getLogger("jupyter_vkeys.warehouse.writer")


LOCK_FILE = ".writer.lock"


@contextlib.contextmanager
def exclusive(root: Path):
    """Hold the warehouse's writer lock (blocking until another writer lets it go). Taken
    around every conversion, copy and maintenance pass, and the whole ``--once`` run."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


def convert_pending(root: Path) -> int:
    """Convert every complete journal segment, oldest first. Returns rows written."""
    pending = sorted((root / "journal").glob(f"*{CLOSED_SUFFIX}"))
    if not pending:
        return 0
    from .parquet import convert_segment

    rows = 0
    for path in pending:
        try:
            rows += convert_segment(path, root)
        except FileNotFoundError:
            continue
        except Exception:  # keep the segment for the next attempt; never lose it
            log.exception("cannot convert %s", path.name)
    return rows


def maintain(root: Path, retention_days: int, compact: bool = True) -> None:
    """Compact partitions of past days (not when copying to a bucket: merged files
    would repeat uploaded rows); delete partitions past retention."""
    from .parquet import compact_partition

    today = datetime.now(timezone.utc).date()
    for dataset in ("events", "audit"):
        for partition in sorted((root / dataset).glob("date=*")):
            try:
                day = datetime.strptime(partition.name[5:], "%Y-%m-%d").date()
            except ValueError:
                continue
            if retention_days and day < today - timedelta(days=retention_days):
                shutil.rmtree(partition, ignore_errors=True)
            elif day < today and compact:
                compact_partition(partition)


def spend_by_path(root: Path, window_starts: dict[str, float]) -> list[dict]:
    """Sum of ``cost_pico`` per key path in each window (``start_time >= start``)."""
    import duckdb

    from .parquet import snapshot

    files = snapshot(root, "events").parquet
    if not files:
        return []
    listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    sums = ", ".join(
        f"COALESCE(SUM(cost_pico) FILTER (WHERE epoch_us(start_time) >= {int(start * 1e6)}),"
        f" 0)::BIGINT AS \"{period}\"" for period, start in window_starts.items())
    con = duckdb.connect()
    result = con.execute(
        f'SELECT key_id, parent_key_id, "user", team, project, {sums} '
        f"FROM read_parquet([{listing}], union_by_name = true) WHERE cost_pico > 0 GROUP BY ALL")
    columns = [d[0] for d in result.description]
    rows = [dict(zip(columns, r)) for r in result.fetchall()]
    con.close()
    return rows


def typical_output(root: Path, days: int = 30) -> dict[str, int]:
    """Median output tokens per requested model over the last ``days`` of successful calls
    (the dry run's "expected" length). Read once at gateway start-up, in this process."""
    import duckdb

    from .parquet import snapshot

    files = snapshot(root, "events").parquet
    if not files:
        return {}
    listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
    con = duckdb.connect()
    try:
        rows = con.execute(
            f"SELECT request_model, CAST(median(output_tokens) AS BIGINT) FROM read_parquet("
            f"[{listing}], union_by_name = true) WHERE status = 'ok' AND output_tokens > 0 "
            f"AND start_time >= now() - INTERVAL {int(days)} DAY GROUP BY ALL").fetchall()
    finally:
        con.close()
    return {model: int(tokens) for model, tokens in rows if model}


def copy_out(root: Path, bucket: str, replica: str) -> None:
    """Copy new Parquet files to the bucket (see :mod:`.object_store`); never raises."""
    if not bucket:
        return
    from .object_store import upload_new

    try:
        upload_new(root, bucket, replica)
    except Exception:  # the bucket is down or refuses: retried next round
        log.exception("cannot copy Parquet files to %s", bucket)


def run(root: Path, parent: int, retention_days: int, poll: float, bucket: str = "",
        replica: str = "") -> None:
    """Convert segments as they complete (and copy them to ``bucket``) until stopped or
    orphaned."""
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    last_maintenance = time.monotonic() - 3600 + 30  # first maintenance after 30 s
    while True:
        with exclusive(root):
            if convert_pending(root) or bucket:
                copy_out(root, bucket, replica)
            if time.monotonic() - last_maintenance > 3600:
                maintain(root, retention_days, compact=not bucket)
                last_maintenance = time.monotonic()
        if stopping or (parent and os.getppid() != parent):
            with exclusive(root):
                convert_pending(root)
                copy_out(root, bucket, replica)
            return
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--once", action="store_true")
    parser.add_argument("--windows", default="{}", help="JSON {period: window start epoch}")
    parser.add_argument("--parent", type=int, default=0)
    parser.add_argument("--retention-days", type=int, default=0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--bucket", default="", help="s3://bucket/prefix to copy Parquet to")
    parser.add_argument("--replica", default="", help="this replica's name (object names)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.once:
        with exclusive(args.root):
            convert_pending(args.root)
            copy_out(args.root, args.bucket, args.replica)
            json.dump({"spend": spend_by_path(args.root, json.loads(args.windows)),
                       "typical_output": typical_output(args.root)}, sys.stdout)
        return 0
    _yield_cpu()
    run(args.root, args.parent, args.retention_days, args.poll, args.bucket, args.replica)
    return 0


def _yield_cpu() -> None:
    """Run conversion at a lower CPU priority (nice +10): it is background work whose input
    is already durable in the journal, so under contention the gateway's calls go first
    and conversion catches up when load drops. (The ``--once`` rebuild at start-up keeps
    normal priority: the gateway waits for it.)"""
    try:
        os.nice(10)
    except (AttributeError, OSError):  # not on this platform, or not permitted
        pass


if __name__ == "__main__":
    sys.exit(main())
