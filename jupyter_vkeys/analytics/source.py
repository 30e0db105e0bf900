"""Open a warehouse for analysis: a DuckDB connection with one normalized view, ``ev``.

Called by every analytics module and notebook before querying. The warehouse may have
been written by this gateway, another replica, a backfill or an import: any directory
laid out as ``events/date=YYYY-MM-DD/*.parquet`` (schema v1 or later), with or without
a journal. ``ev`` has every column of the current event schema (columns an older or
foreign writer did not write are NULL of the right type) plus derived columns the
queries share: ``model``, ``entity_key`` (the parent of a per-kernel key, else the key),
``day``, ``hour``, and flags ``is_error``, ``is_refusal``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from ..warehouse import readers
from ..warehouse.schema import EVENTS_SCHEMA

ERROR_STATUSES = ("error", "upstream_error", "timeout", "lost")
REFUSAL_STATUSES = ("refused_budget", "refused_rate", "refused_model", "refused_key")

_SPELLED = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}  # how DESCRIBE spells it
_DUCK = {pa.int16(): "SMALLINT", pa.int64(): "BIGINT", pa.float64(): "DOUBLE",
         pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR"}


def default_warehouse() -> Path:
    """``$VKEYS_DATA_DIR/warehouse`` or ``<jupyter data dir>/vkeys/warehouse`` (the
    gateway's default), computed here so analytics never imports the gateway."""
    from jupyter_core.paths import jupyter_data_dir

    data_dir = os.environ.get("VKEYS_DATA_DIR") or os.path.join(jupyter_data_dir(), "vkeys")
    return readers.warehouse_root(data_dir)


def resolve(path: str | os.PathLike | None) -> Path:
    """The warehouse root for ``path`` (a data directory or a warehouse root)."""
    return default_warehouse() if path is None else readers.warehouse_root(path)


def has_events(path: str | os.PathLike | None) -> bool:
    """True when ``path`` holds at least one event file (Parquet or journal segment).
    Notebooks call it to decide between the real warehouse and simulated data."""
    root = resolve(path)
    if readers.is_object_url(root):
        return bool(readers.list_parquet(root, "events")[1])
    return any((root / "events").glob("date=*/*.parquet")) or any(
        (root / "journal").glob("events-*"))


def _duck_type(field: pa.Field) -> str:
    if pa.types.is_timestamp(field.type):
        return "TIMESTAMPTZ"
    return _DUCK[field.type]


def connect(path: str | os.PathLike | None = None, *, threads: int | None = None):
    """A DuckDB connection on the warehouse at ``path`` with the ``ev`` view.

    Views are bound to the files present now; call again to see newer rows.
    """
    con = readers.connect(resolve(path))
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    normalize(con)
    return con


def normalize(con, source: str = "events") -> None:
    """(Re)create ``ev`` over the view or table ``source`` on ``con``."""
    present = {row[0]: row[1] for row in con.execute(f"DESCRIBE {source}").fetchall()}
    cols = []
    for field in EVENTS_SCHEMA:
        want = _duck_type(field)
        if field.name not in present:
            cols.append(f'CAST(NULL AS {want}) AS "{field.name}"')
        elif present[field.name].upper() in (want, _SPELLED.get(want)):
            cols.append(f'"{field.name}"')
        else:  # a foreign writer's type: cast what converts, NULL what does not
            cols.append(f'TRY_CAST("{field.name}" AS {want}) AS "{field.name}"')
    # day from the hive partition (the UTC day of start_time by the documented layout):
    # truncating a TIMESTAMPTZ goes through ICU and costs ~4x the whole aggregation
    day = "CAST(date AS DATE)" if "date" in present else (
        "CAST(make_timestamp((epoch_us(start_time) // 86400000000) * 86400000000) AS DATE)")
    errors = ", ".join(f"'{s}'" for s in ERROR_STATUSES)
    refusals = ", ".join(f"'{s}'" for s in REFUSAL_STATUSES)
    con.execute(f"""
        CREATE OR REPLACE VIEW ev AS
        SELECT *,
               coalesce(response_model, request_model) AS model,
               coalesce(parent_key_id, key_id) AS entity_key,
               {day} AS day,
               make_timestamptz((epoch_us(start_time) // 3600000000) * 3600000000) AS hour,
               status IN ({errors}) AS is_error,
               status IN ({refusals}) AS is_refusal
        FROM (SELECT {", ".join(cols)}{", date" if "date" in present else ""}
              FROM {source})""")
