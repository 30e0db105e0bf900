"""The key registry, scope policies and admin audit of several replicas on PostgreSQL.

:class:`PgStore` answers the same narrow interface as :class:`jupyter_vkeys.store.Store`
(rows in, rows out), so the registry, the runtime and the admin API do not change. It is
opened by :meth:`VKeysGateway.start <jupyter_vkeys.gateway.core.VKeysGateway.start>`
when ``c.VKeysGateway.registry_url`` is a ``postgresql://`` URL. Every write and its
audit row share one transaction, and the same transaction sends ``NOTIFY
vkeys_registry, '<kind>:<name>'`` (delivered to listeners only at commit), which
:mod:`.registry_sync` turns into the change on every other replica.
"""

from __future__ import annotations

import collections
import hmac
import json
import logging
import time
from typing import Any, Callable

from ..keys import KeyRecord
from ..store import KEY_COLUMNS, key_record, key_row, public_view

__all__ = ["PgStore", "CHANNEL"]

log = logging.getLogger("jupyter_vkeys")

CHANNEL = "vkeys_registry"
# Seconds after which a replica that stopped reporting (every HEARTBEAT s) is not waited
# for: a replica killed less than this ago delays an admin change by up to ack_timeout.
HEARTBEAT = 1.0
REPLICA_STALE = 3.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS vkeys_keys (
    id TEXT PRIMARY KEY,
    secret_hash BYTEA NOT NULL,
    alias TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    team TEXT NOT NULL DEFAULT '',
    project TEXT NOT NULL DEFAULT '',
    parent_id TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    metadata TEXT NOT NULL DEFAULT '{}',
    policy TEXT NOT NULL DEFAULT '{}',
    previous_secret_hash BYTEA,
    previous_valid_until DOUBLE PRECISION
);
CREATE INDEX IF NOT EXISTS vkeys_keys_owner ON vkeys_keys(owner);
CREATE TABLE IF NOT EXISTS vkeys_policies (
    scope TEXT PRIMARY KEY,
    policy TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS vkeys_meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vkeys_replicas (
    replica TEXT PRIMARY KEY,
    applied_seq BIGINT NOT NULL,
    seen_at DOUBLE PRECISION NOT NULL,
    listener_pid INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS vkeys_audit (
    seq BIGSERIAL PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    before TEXT,
    after TEXT
);
"""

# One unrevoked personal key per Hub user (the hub service's issuer mints it at the user's
# first kernel): two replicas starting two kernels of a new user at once would otherwise
# each mint one. The second INSERT is refused (KeyConflict) and its replica reads the
# first back. Created apart from SCHEMA so that a registry already holding duplicates
# (made before this index) still starts, with an error naming them.
PERSONAL_INDEX = """
CREATE UNIQUE INDEX IF NOT EXISTS vkeys_keys_one_hub_personal ON vkeys_keys (owner)
    WHERE revoked_at IS NULL AND (metadata::jsonb ->> 'kind') = 'user'
    AND (metadata::jsonb ->> 'hub') = 'true'
"""

_SELECT_KEYS = f"SELECT {', '.join(KEY_COLUMNS)} FROM vkeys_keys"


class PgStore:
    """One connection to the shared PostgreSQL database, per gateway process.

    Synchronous like the SQLite store: only admin operations and change notifications
    call it, never a data-plane request.
    """

    def __init__(self, url: str) -> None:
        import psycopg

        self.url = url
        self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
        with self.db.transaction():
            # replicas starting together must not race each other's CREATE TABLE
            self.db.execute("SELECT pg_advisory_xact_lock(7244031)")
            self.db.execute(SCHEMA)
        self._personal_index()
        self.on_audit: Callable[[dict[str, Any]], None] | None = None
        # Set by RegistrySync: this replica's name (its own changes need no ack).
        self.replica = ""
        self.ack_timeout = 1.0
        self.ack_waits: collections.deque[float] = collections.deque(maxlen=1000)
        # Set by RegistrySync: installs others' changes while this replica waits for acks.
        self.on_wait: Callable[[], None] | None = None

    def _personal_index(self) -> None:
        """Create :data:`PERSONAL_INDEX`, or log which users already hold two unrevoked
        personal keys (revoke one; the index is made at the next start)."""
        import psycopg

        try:
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(7244031)")
                self.db.execute(PERSONAL_INDEX)
        except psycopg.errors.UniqueViolation:
            owners = [owner for (owner,) in self.db.execute(
                "SELECT owner FROM vkeys_keys WHERE revoked_at IS NULL AND "
                "(metadata::jsonb ->> 'kind') = 'user' AND (metadata::jsonb ->> 'hub') = "
                "'true' GROUP BY owner HAVING count(*) > 1")]
            log.error("jupyter-vkeys: Hub users %s hold more than one active personal key; "
                      "revoke the extra ones (until then two replicas may mint a third)",
                      ", ".join(owners[:20]))

    @property
    def db(self):
        """The connection, opened again if PostgreSQL dropped it (a restart)."""
        if self._db.closed or self._db.broken:
            import psycopg

            self._db = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self._db

    def close(self) -> None:
        """Close the connection; called by the gateway's shutdown."""
        self._db.close()

    def check_pepper(self, pepper: bytes) -> None:
        """Refuse to serve with a pepper other than the registry's (keys made on another
        replica would never authenticate here). Called by ``VKeysGateway.start``; the
        first replica records a keyed fingerprint, never the pepper."""
        fingerprint = hmac.new(pepper, b"jupyter-vkeys pepper check", "sha256").hexdigest()
        db = self.db
        db.execute("INSERT INTO vkeys_meta (name, value) VALUES ('pepper_check', %s) "
                   "ON CONFLICT (name) DO NOTHING", (fingerprint,))
        (saved,) = db.execute("SELECT value FROM vkeys_meta WHERE name = 'pepper_check'"
                              ).fetchone()
        if not hmac.compare_digest(saved, fingerprint):
            raise ValueError("this replica's key pepper differs from the one the shared "
                             "registry's keys were made with; set the same VKEYS_PEPPER on "
                             "every replica")

    # -- keys ------------------------------------------------------------------------
    def load_keys(self, owner: str | None = None) -> list[KeyRecord]:
        """Every key record (for the in-memory registry at start-up), or ``owner``'s (what
        :meth:`KeyRegistry.reload_owner` reads after a :class:`KeyConflict`)."""
        rows = (self.db.execute(_SELECT_KEYS + " WHERE owner = %s", (owner,))
                if owner is not None else self.db.execute(_SELECT_KEYS)).fetchall()
        return [key_record(row) for row in rows]

    def load_key(self, key_id: str) -> KeyRecord | None:
        """One key record (after a change notification), or None."""
        row = self.db.execute(_SELECT_KEYS + " WHERE id = %s", (key_id,)).fetchone()
        return key_record(row) if row else None

    def save_key(self, before: KeyRecord | None, after: KeyRecord, *, actor: str,
                 action: str) -> KeyRecord | None:
        """Insert or replace ``after``, audit the change and notify, atomically.

        A revocation (``action == "key.revoke"``) of a key another replica revoked first
        writes nothing and answers the stored record (two replicas' reapers revoking the
        same key audit it once). Another replica's unrevoked personal key of the same Hub
        user raises :class:`~jupyter_vkeys.registry.KeyConflict`. Otherwise None."""
        import psycopg

        from ..registry import KeyConflict

        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in KEY_COLUMNS[1:])
        db = self.db
        try:
            with db.transaction():
                if action == "key.revoke":
                    row = db.execute(_SELECT_KEYS + " WHERE id = %s FOR UPDATE",
                                     (after.id,)).fetchone()
                    if row is not None and row[KEY_COLUMNS.index("revoked_at")] is not None:
                        return key_record(row)
                db.execute(f"INSERT INTO vkeys_keys ({', '.join(KEY_COLUMNS)}) VALUES "
                           f"({', '.join(['%s'] * len(KEY_COLUMNS))}) ON CONFLICT (id) DO "
                           f"UPDATE SET {updates}", key_row(after))
                pending = self._audit(actor, action, f"key:{after.id}", public_view(before),
                                      public_view(after))
                self._notify(f"key:{after.id}", pending["seq"])
        except psycopg.errors.UniqueViolation:
            raise KeyConflict(
                f"{after.owner!r} already has an active personal key, created by another "
                "replica a moment ago; a Hub user has one personal key") from None
        self._audited(pending)
        self._await_replicas(pending["seq"])
        return None

    # -- policies --------------------------------------------------------------------
    def load_policies(self) -> dict[str, dict[str, Any]]:
        """Every scope policy as saved (``scope -> policy dict``)."""
        return {scope: json.loads(policy) for scope, policy in
                self.db.execute("SELECT scope, policy FROM vkeys_policies").fetchall()}

    def load_policy(self, scope: str) -> dict[str, Any] | None:
        """One scope policy (after a change notification), or None if it was deleted."""
        row = self.db.execute("SELECT policy FROM vkeys_policies WHERE scope = %s",
                              (scope,)).fetchone()
        return json.loads(row[0]) if row else None

    def save_policy(self, scope: str, before: dict[str, Any] | None,
                    after: dict[str, Any] | None, *, actor: str) -> None:
        """Set (or with None delete) a scope policy, audit it and notify, atomically."""
        db = self.db
        with db.transaction():
            if after is None:
                self.db.execute("DELETE FROM vkeys_policies WHERE scope = %s", (scope,))
            else:
                self.db.execute(
                    "INSERT INTO vkeys_policies (scope, policy, updated_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT (scope) DO UPDATE SET policy = EXCLUDED.policy, "
                    "updated_at = EXCLUDED.updated_at", (scope, json.dumps(after), time.time()))
            pending = self._audit(actor, "policy.delete" if after is None else "policy.set",
                                  scope, before, after)
            self._notify(f"policy:{scope}", pending["seq"])
        self._audited(pending)
        self._await_replicas(pending["seq"])

    # -- audit -----------------------------------------------------------------------
    def audit_rows(self, since_seq: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Audit rows after ``since_seq``, oldest first (every replica's actions)."""
        rows = self.db.execute(
            "SELECT seq, ts, actor, action, target, before, after FROM vkeys_audit "
            "WHERE seq > %s ORDER BY seq LIMIT %s", (since_seq, limit)).fetchall()
        return [{"seq": r[0], "ts": r[1], "actor": r[2], "action": r[3], "target": r[4],
                 "before": json.loads(r[5]) if r[5] else None,
                 "after": json.loads(r[6]) if r[6] else None} for r in rows]

    # -- internals -------------------------------------------------------------------
    def _notify(self, payload: str, seq: int) -> None:
        self.db.execute("SELECT pg_notify(%s, %s)",
                        (CHANNEL, f"{payload}|{time.time():.6f}|{seq}"))

    # -- replicas' acknowledgements ----------------------------------------------------
    def max_seq(self) -> int:
        """The newest audit sequence number (what a freshly loaded replica has applied)."""
        return self.db.execute("SELECT coalesce(max(seq), 0) FROM vkeys_audit").fetchone()[0]

    def replica_seen(self, replica: str, applied_seq: int | None = None,
                     listener_pid: int | None = None) -> None:
        """Record that ``replica`` is alive (and has applied changes up to ``applied_seq``);
        called by :class:`.registry_sync.RegistrySync` when it starts listening (with
        the server pid of its listening session), after each change it applied, and
        every :data:`HEARTBEAT` seconds."""
        if applied_seq is None:
            self.db.execute("UPDATE vkeys_replicas SET seen_at = %s WHERE replica = %s",
                            (time.time(), replica))
        elif listener_pid is not None:
            self.db.execute(
                "INSERT INTO vkeys_replicas (replica, applied_seq, seen_at, listener_pid) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (replica) DO UPDATE SET seen_at = "
                "EXCLUDED.seen_at, applied_seq = EXCLUDED.applied_seq, listener_pid = "
                "EXCLUDED.listener_pid", (replica, applied_seq, time.time(), listener_pid))
        else:
            self.db.execute(
                "UPDATE vkeys_replicas SET seen_at = %s, applied_seq = greatest(applied_seq, %s) "
                "WHERE replica = %s", (time.time(), applied_seq, replica))

    def replica_gone(self, replica: str) -> None:
        """Forget ``replica`` (its clean shutdown)."""
        self.db.execute("DELETE FROM vkeys_replicas WHERE replica = %s", (replica,))

    def _await_replicas(self, seq: int) -> None:
        """Return once every other live replica applied change ``seq`` (so a request sent
        after the admin API answered meets the change on every replica), or after
        ``ack_timeout`` s, naming the replicas that did not answer. A replica counts as
        live while its listening session is (PostgreSQL ends the session as soon as the
        replica's process dies and its socket closes) and it reported in the last
        :data:`REPLICA_STALE` s; a live replica cut off from PostgreSQL refuses calls
        itself.

        The wait is synchronous, on the writing replica's loop (admin operations are
        synchronous calls): a few milliseconds as measured; up to ``ack_timeout`` only
        when a replica hangs with its session open."""
        started = time.monotonic()
        deadline = started + self.ack_timeout
        pause = 0.0005
        while True:
            behind = [r for (r,) in self.db.execute(
                "SELECT replica FROM vkeys_replicas WHERE replica <> %s AND applied_seq < %s "
                "AND seen_at > %s AND listener_pid IN (SELECT pid FROM pg_stat_activity)",
                (self.replica, seq, time.time() - REPLICA_STALE))]
            if not behind:
                self.ack_waits.append(time.monotonic() - started)
                return
            if time.monotonic() >= deadline:
                log.warning("jupyter-vkeys: registry change %d not acknowledged within %.1f s "
                            "by replicas %s", seq, self.ack_timeout, ", ".join(behind))
                return
            if self.on_wait is not None:  # they may be waiting for this replica's ack
                try:
                    self.on_wait()
                except Exception:
                    log.exception("jupyter-vkeys: catching up with the registry failed")
            time.sleep(pause)
            pause = min(pause * 2, 0.01)

    def _audit(self, actor: str, action: str, target: str, before: Any,
               after: Any) -> dict[str, Any]:
        row = {"ts": time.time(), "actor": actor, "action": action, "target": target,
               "before": json.dumps(before) if before is not None else None,
               "after": json.dumps(after) if after is not None else None}
        seq = self.db.execute(
            "INSERT INTO vkeys_audit (ts, actor, action, target, before, after) VALUES "
            "(%(ts)s, %(actor)s, %(action)s, %(target)s, %(before)s, %(after)s) RETURNING seq",
            row).fetchone()[0]
        return {"seq": seq, **row}

    def _audited(self, pending: dict[str, Any]) -> None:
        """Pass a committed audit row to the warehouse; never undoes or fails the change."""
        if self.on_audit is not None:
            try:
                self.on_audit(pending)
            except Exception:
                log.exception("jupyter-vkeys: audit row %s not passed to the warehouse",
                              pending.get("seq"))
