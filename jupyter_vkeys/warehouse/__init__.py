"""The warehouse: every call and admin action as rows in open Parquet files.

Writers: :mod:`.journal` and :mod:`.sink` in the gateway process (no pyarrow
there), :mod:`.writer` and :mod:`.parquet` in the writer child process.
Readers, in any process: :func:`connect` (DuckDB with ``events`` and ``audit``
views), :func:`scan` (Polars LazyFrame), :func:`read_table` (Arrow; pandas via
``.to_pandas()``). Readers are imported lazily so the gateway stays small.
"""

from __future__ import annotations

from typing import Any

from .version import SCHEMA_VERSION

__all__ = ["SCHEMA_VERSION", "connect", "read_table", "refresh", "scan", "warehouse_root"]


def __getattr__(name: str) -> Any:
    if name in ("connect", "read_table", "refresh", "scan", "warehouse_root"):
        from . import readers
        return getattr(readers, name)
    raise AttributeError(name)
