"""Reading the warehouse from any process: DuckDB, Polars, pandas.

Readers never open the gateway's own database file. They read a
:func:`~.parquet.snapshot`: the Parquet files plus the live journal tail (rows
written in the last seconds, not yet in Parquet), each row once. Safe while
the gateway writes: Parquet files appear atomically, a half-written journal
line is ignored, and a segment converted while being listed is retried.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa

from ..paths import default_data_dir
from .journal import CLOSED_SUFFIX, OPEN_SUFFIX
from .object_store import is_object_url, list_parquet
from .parquet import read_segment, snapshot, typed
from .schema import SCHEMAS

# Seconds a reader keeps retrying a snapshot while the writer converts segments under it.
SNAPSHOT_PATIENCE = 10.0


def warehouse_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/warehouse``; ``data_dir`` defaults to ``$VKEYS_DATA_DIR`` or
    ``<jupyter data dir>/vkeys``; a path that already is a warehouse is kept, and so is
    an ``s3://`` warehouse URL."""
    if is_object_url(data_dir):
        return data_dir  # an s3:// warehouse: readers take the URL as it is
    if data_dir is None:
        data_dir = default_data_dir()
    path = Path(data_dir).expanduser()
    if not (path / "warehouse").exists() and any(
            (path / sub).exists() for sub in ("journal", "events", "audit")):
        return path  # already a warehouse root
    return path / "warehouse"


def _tail(paths: list[Path], dataset: str) -> pa.Table:
    """The journal segments ``paths`` as one table. The open segment may be rolled (renamed
    ``.open`` -> ``.jsonl``) while the others are read: then it is read under its new name.
    Raises FileNotFoundError for a segment converted to Parquet meanwhile (the caller takes
    a new snapshot)."""
    tables = []
    for path in paths:
        try:
            table = read_segment(path, dataset)
        except FileNotFoundError:
            if path.suffix != OPEN_SUFFIX:
                raise
            table = read_segment(path.with_suffix(CLOSED_SUFFIX), dataset)
        tables.append(typed(table, dataset))
    return pa.concat_tables(tables) if tables else SCHEMAS[dataset].empty_table()


def load(root: Path, dataset: str) -> tuple[list[Path], pa.Table]:
    """Parquet files to read and the journal tail as a table, consistently: retried, with
    a growing pause, while segments are converted under the reader (a busy gateway rolls
    and converts them several times a second), for up to ``SNAPSHOT_PATIENCE`` seconds."""
    deadline = time.monotonic() + SNAPSHOT_PATIENCE
    pause = 0.001
    while True:
        snap = snapshot(root, dataset)
        try:
            return snap.parquet, _tail(snap.journal, dataset)
        except FileNotFoundError:  # converted under our feet: its Parquet is there now
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not take a stable snapshot of {root / dataset} "
                                   f"in {SNAPSHOT_PATIENCE:g} s: its journal segments kept "
                                   "being converted while they were read") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def connect(data_dir: str | os.PathLike | None = None, database: str = ":memory:"):
    """A DuckDB connection with ``events`` and ``audit`` views over the warehouse.

    Views are bound to the files present now; call again (or
    :func:`refresh`) to see newer rows.
    """
    import duckdb

    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")
    refresh(con, data_dir)
    return con


def bucket_dataset(url: str, dataset: str):
    """A pyarrow dataset over every replica's Parquet files of ``dataset`` in the bucket
    ``url`` (``s3://bucket/prefix``, see :mod:`.object_store`), with the hive ``date``
    column; None when there are none yet."""
    import pyarrow.dataset as ds

    s3, paths = list_parquet(url, dataset)
    if not paths:
        return None
    base = url[len("s3://"):].rstrip("/") + f"/{dataset}"
    schema = SCHEMAS[dataset].append(pa.field("date", pa.string()))
    return ds.dataset(paths, filesystem=s3, format="parquet", schema=schema,
                      partitioning=ds.partitioning(pa.schema([("date", pa.string())]),
                                                   flavor="hive"),
                      partition_base_dir=base)


def _refresh_bucket(con, url: str) -> None:
    for dataset in ("events", "audit"):
        found = bucket_dataset(url, dataset)
        if found is None:
            con.register(f"{dataset}_bucket", SCHEMAS[dataset].empty_table())
            time_col = "start_time" if dataset == "events" else "ts"
            sql = (f"SELECT *, CAST(timezone('UTC', {time_col}) AS DATE) AS date "
                   f"FROM {dataset}_bucket")
        else:
            con.register(f"{dataset}_bucket", found)
            sql = f"SELECT * REPLACE (CAST(date AS DATE) AS date) FROM {dataset}_bucket"
        con.execute(f"CREATE OR REPLACE VIEW {dataset} AS {sql}")


def refresh(con, data_dir: str | os.PathLike | None = None) -> None:
    """(Re)create the ``events`` and ``audit`` views on ``con`` from a fresh snapshot
    (``data_dir`` may be an ``s3://`` warehouse URL: every replica's files there)."""
    if is_object_url(data_dir):
        _refresh_bucket(con, data_dir)
        return
    root = warehouse_root(data_dir)
    for dataset in ("events", "audit"):
        files, tail = load(root, dataset)
        time_col = "start_time" if dataset == "events" else "ts"
        con.register(f"{dataset}_journal_tail", tail)
        tail_sql = (f"SELECT *, CAST(timezone('UTC', {time_col}) AS DATE) AS date "
                    f"FROM {dataset}_journal_tail")
        if files:
            listing = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
            parquet_sql = (f"SELECT * REPLACE (CAST(date AS DATE) AS date) FROM read_parquet("
                           f"[{listing}], hive_partitioning = true, union_by_name = true)")
            sql = f"{parquet_sql} UNION ALL BY NAME {tail_sql}"
        else:
            sql = tail_sql
        con.execute(f"CREATE OR REPLACE VIEW {dataset} AS {sql}")


def scan(dataset: str = "events", data_dir: str | os.PathLike | None = None):
    """A Polars LazyFrame over a dataset (Parquet files plus journal tail)."""
    import polars as pl

    if is_object_url(data_dir):
        return pl.from_arrow(read_table(dataset, data_dir)).lazy().with_columns(
            pl.col("start_time" if dataset == "events" else "ts").dt.date().alias("date"))
    root = warehouse_root(data_dir)
    files, tail = load(root, dataset)
    time_col = "start_time" if dataset == "events" else "ts"
    frames = []
    if files:
        frames.append(pl.scan_parquet([str(p) for p in files], hive_partitioning=False,
                                      missing_columns="insert", extra_columns="ignore",
                                      schema=pl.Schema(pl.from_arrow(
                                          SCHEMAS[dataset].empty_table()).schema)))
    frames.append(pl.from_arrow(tail).lazy())
    frame = pl.concat(frames, how="diagonal_relaxed")
    return frame.with_columns(pl.col(time_col).dt.date().alias("date"))


def read_table(dataset: str = "events", data_dir: str | os.PathLike | None = None) -> pa.Table:
    """The whole dataset as one Arrow table (``.to_pandas()`` for pandas)."""
    import pyarrow.parquet as pq

    if is_object_url(data_dir):
        found = bucket_dataset(data_dir, dataset)
        if found is None:
            return SCHEMAS[dataset].empty_table()
        return found.to_table(columns=SCHEMAS[dataset].names)
    root = warehouse_root(data_dir)
    files, tail = load(root, dataset)
    tables = [pq.read_table(p, schema=SCHEMAS[dataset]) for p in files] + [tail]
    return pa.concat_tables(tables)
