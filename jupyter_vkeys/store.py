"""Durable registry of keys and scope policies, and the admin audit trail (SQLite).

Only the control plane writes here (key creation, updates, revocation, policy
changes); every write and its audit row share one transaction. The data plane
never touches this file: the registry loads everything into memory at start-up.
Interfaces are narrow (rows in, rows out) so the registry can move to
PostgreSQL without the callers changing.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

from .keys import KeyRecord

log = logging.getLogger("jupyter_vkeys")

SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    alias TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    team TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL DEFAULT '',
    parent_id TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    metadata TEXT NOT NULL DEFAULT '{}',
    policy TEXT NOT NULL DEFAULT '{}',
    previous_secret_hash BLOB,
    previous_valid_until REAL
);
CREATE INDEX IF NOT EXISTS keys_owner ON keys(owner);
CREATE TABLE IF NOT EXISTS policies (
    scope TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT,
    after TEXT
);
"""

# The columns of a key row, in order: the SQLite store and the PostgreSQL registry
# (jupyter_vkeys.state.pg_store) both keep keys so, and share key_row/key_record.
KEY_COLUMNS = ("id", "secret_hash", "alias", "owner", "team", "project", "parent_id",
               "created_at", "expires_at", "revoked_at", "metadata", "policy",
               "previous_secret_hash", "previous_valid_until")


def key_row(record: KeyRecord) -> tuple:
    """``record`` as a row of :data:`KEY_COLUMNS` (metadata and policy as JSON text)."""
    return (record.id, record.secret_hash, record.alias, record.owner, record.team,
            record.project, record.parent_id, record.created_at, record.expires_at,
            record.revoked_at, json.dumps(record.metadata), json.dumps(record.policy),
            record.previous_secret_hash, record.previous_valid_until)


def key_record(row: tuple) -> KeyRecord:
    """The record of a row of :data:`KEY_COLUMNS`, as either database returns it (hashes
    as ``bytes``, or PostgreSQL's ``memoryview``)."""
    values = dict(zip(KEY_COLUMNS, row))
    values["metadata"] = json.loads(values["metadata"])
    values["policy"] = json.loads(values["policy"])
    for name in ("secret_hash", "previous_secret_hash"):
        if values[name] is not None and not isinstance(values[name], bytes):
            values[name] = bytes(values[name])
    return KeyRecord(**values)


def public_view(record: KeyRecord | None) -> dict[str, Any] | None:
    """A key record without any secret material: for audit rows, the API and the CLI."""
    if record is None:
        return None
    return {"id": record.id, "alias": record.alias, "owner": record.owner, "team": record.team,
            "project": record.project, "parent_id": record.parent_id,
            "created_at": record.created_at, "expires_at": record.expires_at,
            "revoked_at": record.revoked_at, "metadata": dict(record.metadata),
            "policy": dict(record.policy),
            "previous_secret_valid_until": record.previous_valid_until}


class Store:
    """The SQLite file under the data directory. One instance per gateway process.

    Opened by the gateway at start-up (or by the CLI when no gateway runs);
    every method is short and synchronous.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)
        self._pending_audit: dict[str, Any] | None = None
        self.on_audit: Callable[[dict[str, Any]], None] | None = None

    def close(self) -> None:
        """Close the database; called by the gateway's shutdown."""
        self.db.close()

    # -- keys ------------------------------------------------------------------------
    def load_keys(self, owner: str | None = None) -> list[KeyRecord]:
        """Every key record (for the in-memory registry at start-up), or ``owner``'s."""
        query = f"SELECT {', '.join(KEY_COLUMNS)} FROM keys"
        rows = (self.db.execute(query + " WHERE owner = ?", (owner,)) if owner is not None
                else self.db.execute(query)).fetchall()
        return [key_record(row) for row in rows]

    def save_key(self, before: KeyRecord | None, after: KeyRecord, *, actor: str,
                 action: str) -> None:
        """Insert or replace ``after`` and audit the change from ``before``, atomically."""
        row = key_row(after)
        with self._transaction() as db:
            db.execute(f"INSERT OR REPLACE INTO keys ({', '.join(KEY_COLUMNS)}) "
                       f"VALUES ({', '.join('?' * len(KEY_COLUMNS))})", row)
            self._audit(db, actor, action, f"key:{after.id}", public_view(before),
                        public_view(after))

    # -- policies --------------------------------------------------------------------
    def load_policies(self) -> dict[str, dict[str, Any]]:
        """Every scope policy as saved (``scope -> policy dict``)."""
        return {scope: json.loads(policy)
                for scope, policy in self.db.execute("SELECT scope, policy FROM policies")}

    def save_policy(self, scope: str, before: dict[str, Any] | None,
                    after: dict[str, Any] | None, *, actor: str) -> None:
        """Set (or with None delete) a scope policy and audit it, atomically."""
        with self._transaction() as db:
            if after is None:
                db.execute("DELETE FROM policies WHERE scope = ?", (scope,))
            else:
                db.execute("INSERT OR REPLACE INTO policies (scope, policy, updated_at) "
                           "VALUES (?, ?, ?)", (scope, json.dumps(after), time.time()))
            self._audit(db, actor, "policy.delete" if after is None else "policy.set",
                        scope, before, after)

    # -- audit -----------------------------------------------------------------------
    def audit_rows(self, since_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Audit rows after ``since_seq``, oldest first (the warehouse exports these)."""
        rows = self.db.execute(
            "SELECT seq, ts, actor, action, target, before, after FROM audit WHERE seq > ? "
            "ORDER BY seq LIMIT ?", (since_seq, limit)).fetchall()
        return [{"seq": r[0], "ts": r[1], "actor": r[2], "action": r[3], "target": r[4],
                 "before": json.loads(r[5]) if r[5] else None,
                 "after": json.loads(r[6]) if r[6] else None} for r in rows]

    # -- internals -------------------------------------------------------------------
    def _transaction(self):
        store = self

        class _Tx:
            def __enter__(self) -> sqlite3.Connection:
                store.db.execute("BEGIN IMMEDIATE")
                return store.db

            def __exit__(self, exc_type, exc, tb) -> None:
                store.db.execute("ROLLBACK" if exc_type else "COMMIT")
                pending, store._pending_audit = store._pending_audit, None
                if pending is not None and not exc_type and store.on_audit is not None:
                    try:  # committed already: telling the warehouse must not undo or fail it
                        store.on_audit(pending)
                    except Exception:
                        log.exception("jupyter-vkeys: audit row %s not passed to the "
                                      "warehouse", pending.get("seq"))

        return _Tx()

    def _audit(self, db: sqlite3.Connection, actor: str, action: str, target: str, before: Any,
               after: Any) -> None:
        row = {"ts": time.time(), "actor": actor, "action": action, "target": target,
               "before": json.dumps(before) if before is not None else None,
               "after": json.dumps(after) if after is not None else None}
        cursor = db.execute("INSERT INTO audit (ts, actor, action, target, before, after) "
                            "VALUES (:ts, :actor, :action, :target, :before, :after)", row)
        self._pending_audit = {"seq": cursor.lastrowid, **row}
