"""The warehouse schema version (kept apart so the gateway can import it without pyarrow)."""

SCHEMA_VERSION = 1
