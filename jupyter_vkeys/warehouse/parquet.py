"""Journal segments -> Parquet files, hive-partitioned by date; compaction; snapshots.

Layout under ``<data_dir>/warehouse``::

    journal/events-<segment id>.open           being written by the gateway
    journal/events-<segment id>.jsonl          complete, not yet converted
    events/date=YYYY-MM-DD/seg-<id>.parquet    one segment's rows of that day
    events/date=YYYY-MM-DD/compact-<first>-<last>.parquet   merged segments
    audit/date=YYYY-MM-DD/...                  same for admin actions

Every Parquet file is written under a temporary name and renamed, so readers
(DuckDB, Polars, pandas, Spark) never see half a file. A file's name says which
journal segments it holds, which lets :func:`snapshot` pair Parquet files with
the journal segments not yet converted, without duplicates.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from .journal import CLOSED_SUFFIX, OPEN_SUFFIX, segment_id_of
from .schema import PARTITION_TIME, SCHEMA_VERSION, SCHEMAS, TIME_COLUMNS, journal_schema

_SEG_RE = re.compile(r"^seg-(\d+)\.parquet$")
_COMPACT_RE = re.compile(r"^compact-(\d+)-(\d+)\.parquet$")


def read_segment(path: Path, dataset: str) -> pa.Table:
    """A journal segment as a typed Arrow table (hold rows included; see :func:`typed`)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # ignore a half-written last line
    if end == 0:
        return journal_schema(dataset).empty_table()
    return pa_json.read_json(
        pa.py_buffer(data[:end]),
        read_options=pa_json.ReadOptions(block_size=16 << 20),
        parse_options=pa_json.ParseOptions(explicit_schema=journal_schema(dataset),
                                           unexpected_field_behavior="ignore"))


def typed(table: pa.Table, dataset: str) -> pa.Table:
    """Journal columns -> Parquet columns: epoch floats become UTC timestamps; holds dropped."""
    if dataset == "events":
        table = table.filter(pc.not_equal(table["status"], "hold"))
    columns = []
    for f in SCHEMAS[dataset]:
        column = table[f.name]
        if f.name in TIME_COLUMNS[dataset]:
            micros = pc.cast(pc.round(pc.multiply(column, 1e6)), pa.int64())
            column = pc.cast(micros, f.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=SCHEMAS[dataset])


def _write_atomic(table: pa.Table, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 20)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _partitions(table: pa.Table, dataset: str) -> dict[str, pa.Table]:
    if table.num_rows == 0:
        return {}
    dates = pc.strftime(table[PARTITION_TIME[dataset]], format="%Y-%m-%d")
    out = {}
    for date in pc.unique(dates).to_pylist():
        out[date] = table.filter(pc.equal(dates, date))
    return out


def _duck_type(field: pa.Field, dataset: str) -> str:
    if field.name in TIME_COLUMNS[dataset]:
        return "DOUBLE"  # epoch seconds in the journal
    return {pa.int16(): "SMALLINT", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
            pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR"}[field.type]


def convert_segment(path: Path, root: Path, threads: int = 2) -> int:
    """Turn one complete journal segment into Parquet files and delete it. Returns rows.

    DuckDB parses the JSON lines and writes one zstd Parquet file per date into a
    staging folder (measured: ~2x pyarrow's JSON reader plus writer on this path);
    each file is then renamed to ``<dataset>/date=<d>/seg-<segment id>.parquet``.
    Idempotent: a crash midway rewrites the same names with the same rows.
    """
    import duckdb

    dataset = path.name.split("-", 1)[0]
    segment_id = segment_id_of(path)
    schema = SCHEMAS[dataset]
    staging = root / f".staging-{dataset}-{segment_id}"
    shutil.rmtree(staging, ignore_errors=True)
    columns = ", ".join(f"'{f.name}': '{_duck_type(f, dataset)}'" for f in schema)
    times = TIME_COLUMNS[dataset]
    select = ", ".join(
        f'make_timestamptz(CAST(round("{f.name}" * 1000000) AS BIGINT)) AS "{f.name}"'
        if f.name in times else f'"{f.name}"' for f in schema)
    part = PARTITION_TIME[dataset]
    where = "WHERE status IS DISTINCT FROM 'hold'" if dataset == "events" else ""
    source = str(path).replace("'", "''")
    con = duckdb.connect()
    try:
        con.execute(f"SET threads = {threads}")
        con.execute("SET TimeZone = 'UTC'")
        target_dir = str(staging).replace("'", "''")
        rows = con.execute(
            f"COPY (SELECT {select}, strftime(make_timestamptz(CAST(round({part} * 1000000)"
            f" AS BIGINT)), '%Y-%m-%d') AS date FROM read_json('{source}', format = "
            f"'newline_delimited', columns = {{{columns}}}) {where}) TO '{target_dir}' "
            f"(FORMAT parquet, PARTITION_BY (date), COMPRESSION zstd, "
            f"KV_METADATA {{schema_version: '{SCHEMA_VERSION}'}})").fetchone()[0]
    finally:
        con.close()
    for written in sorted(staging.glob("date=*/*.parquet")):
        target = root / dataset / written.parent.name / f"seg-{segment_id}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(written, "rb") as f:
            os.fsync(f.fileno())
        os.replace(written, target)
    shutil.rmtree(staging, ignore_errors=True)
    path.unlink(missing_ok=True)
    return rows


def compact_partition(directory: Path, min_files: int = 8) -> Path | None:
    """Merge the small files of one ``date=`` partition into one compacted file.

    The merged file is renamed into place first and its sources deleted after;
    :func:`snapshot` ignores sources that a compacted file covers, so readers
    see each row once even in between. Called by the sink for past days.
    """
    files = sorted(p for p in directory.glob("*.parquet")
                   if _SEG_RE.match(p.name) or _COMPACT_RE.match(p.name))
    if len(files) < min_files:
        return None
    ids = []
    for p in files:
        m = _SEG_RE.match(p.name)
        ids += [m.group(1)] if m else list(_COMPACT_RE.match(p.name).groups())
    schema = SCHEMAS[directory.parent.name]
    table = pa.concat_tables(pq.read_table(p, schema=schema) for p in files)  # every version
    target = directory / f"compact-{min(ids)}-{max(ids)}.parquet"
    _write_atomic(table.sort_by("start_time" if "start_time" in table.column_names else "ts"),
                  target)
    for p in files:
        if p != target:
            p.unlink(missing_ok=True)
    return target


@dataclass
class Snapshot:
    """A consistent set of files to read: Parquet files plus unconverted journal segments."""

    parquet: list[Path] = field(default_factory=list)
    journal: list[Path] = field(default_factory=list)


def snapshot(root: Path, dataset: str) -> Snapshot:
    """List what a reader should read now, each row exactly once.

    Parquet files covered by a compacted file are skipped; journal segments that
    already have Parquet files are skipped (their rows are in Parquet).
    """
    root = Path(root)
    files = [p for p in (root / dataset).glob("date=*/*.parquet")]
    ranges = [m.groups() for p in files if (m := _COMPACT_RE.match(p.name))]
    converted: set[str] = set()
    parquet = []
    for p in files:
        m = _SEG_RE.match(p.name)
        if m and any(lo <= m.group(1) <= hi for lo, hi in ranges):
            continue  # superseded by a compacted file (its deletion is in progress)
        parquet.append(p)
        if m:
            converted.add(m.group(1))
    journal = []
    segments = [p for suffix in (CLOSED_SUFFIX, OPEN_SUFFIX)
                for p in (root / "journal").glob(f"{dataset}-*{suffix}")]
    for p in sorted(segments, key=segment_id_of):
        seg = segment_id_of(p)
        if seg in converted or any(lo <= seg <= hi for lo, hi in ranges):
            continue
        journal.append(p)
    return Snapshot(sorted(parquet), journal)
