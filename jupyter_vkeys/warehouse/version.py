"""The warehouse schema version (kept apart so the gateway can import it without pyarrow)."""

# 1: the first release. 2: adds cell_id, execution_count (cost per cell) and the dry-run
# columns dry_run_cost_usd, dry_run_worst_usd. Readers read every version together.
SCHEMA_VERSION = 2
