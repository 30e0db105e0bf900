"""Reading the warehouse from any process: DuckDB, Polars, pandas.

Readers never open the gateway's own database file. They read a
:func:`~.parquet.snapshot`: the Parquet files plus the live journal tail (rows
written in the last seconds, not yet in Parquet), each row once. Safe while
the gateway writes: Parquet files appear atomically, a half-written journal
line is ignored, and a segment converted while being listed is retried.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from .parquet import read_segment, snapshot, typed
from .schema import SCHEMAS


def warehouse_root(data_dir: str | os.PathLike | None = None) -> Path:
    """``<data_dir>/warehouse``; ``data_dir`` defaults to ``$VKEYS_DATA_DIR`` or
    ``<jupyter data dir>/vkeys``; a path that already is a warehouse is kept."""
    if data_dir is None:
        from ..gateway.core import default_data_dir
        data_dir = os.environ.get("VKEYS_DATA_DIR") or default_data_dir()
    path = Path(data_dir).expanduser()
    if not (path / "warehouse").exists() and any(
            (path / sub).exists() for sub in ("journal", "events", "audit")):
        return path  # already a warehouse root
    return path / "warehouse"


def _tail(paths: list[Path], dataset: str) -> pa.Table:
    tables = [typed(read_segment(p, dataset), dataset) for p in paths]
    return pa.concat_tables(tables) if tables else SCHEMAS[dataset].empty_table()


def load(root: Path, dataset: str) -> tuple[list[Path], pa.Table]:
    """Parquet files to read and the journal tail as a table, consistently (retried if a
    segment is converted while being read)."""
    for _ in range(20):
        snap = snapshot(root, dataset)
        try:
            return snap.parquet, _tail(snap.journal, dataset)
        except FileNotFoundError:
            continue  # converted under our feet: its Parquet is there now
    raise RuntimeError(f"could not take a stable snapshot of {root / dataset}")


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


def refresh(con, data_dir: str | os.PathLike | None = None) -> None:
    """(Re)create the ``events`` and ``audit`` views on ``con`` from a fresh snapshot."""
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

    root = warehouse_root(data_dir)
    files, tail = load(root, dataset)
    tables = [pq.read_table(p, schema=SCHEMAS[dataset]) for p in files] + [tail]
    return pa.concat_tables(tables)
