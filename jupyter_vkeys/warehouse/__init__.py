"""The warehouse: every call and admin action as rows in open Parquet files.

Writers live in the gateway (:mod:`.journal`, :mod:`.parquet`, :mod:`.sink`);
readers in any process: :func:`connect` (DuckDB with ``events`` and ``audit``
views), :func:`scan` (Polars LazyFrame), :func:`read_table` (Arrow, pandas).
"""

from .readers import connect, read_table, refresh, scan, warehouse_root
from .schema import AUDIT_SCHEMA, EVENTS_SCHEMA, SCHEMA_VERSION

__all__ = ["AUDIT_SCHEMA", "EVENTS_SCHEMA", "SCHEMA_VERSION", "connect", "read_table", "refresh",
           "scan", "warehouse_root"]
