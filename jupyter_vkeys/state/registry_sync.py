"""Every replica's copy of the registry follows PostgreSQL: LISTEN/NOTIFY.

:class:`RegistrySync` is started by :meth:`VKeysGateway.start
<jupyter_vkeys.gateway.core.VKeysGateway.start>` when ``registry_url`` is set. It keeps
one connection listening on :data:`.pg_store.CHANNEL`; each notification names a key or
a scope whose row changed (any replica's admin operation, committed), and the row is
read back and installed in this replica's in-memory registry and policy engine, on the
serving loop, between two requests. So a revocation or a limit change applies to the
next request a replica admits once the notification arrived; ``lag`` keeps the last
delays (commit on one replica to installed on this one) for ``/api/ready``-style checks,
tests and the benchmark.

While the listening connection is down (PostgreSQL unreachable) :attr:`connected` is
False and the data plane refuses calls with 503 (a revocation made meanwhile could not
reach this replica); on reconnecting, the whole registry is reloaded first, because
notifications sent while nobody listened are lost.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from .pg_store import CHANNEL, HEARTBEAT, PgStore

if TYPE_CHECKING:
    from ..policy import PolicyEngine
    from ..registry import KeyRegistry

__all__ = ["RegistrySync"]

log = logging.getLogger("jupyter_vkeys.state")


class RegistrySync:
    """Applies other replicas' registry changes to this one."""

    def __init__(self, url: str, store: PgStore, registry: KeyRegistry, policy: PolicyEngine,
                 parse_policy: Callable[[dict[str, Any]], Any], replica: str) -> None:
        self.url = url
        self.replica = replica
        store.replica = replica
        self.store = store
        self.registry = registry
        self.policy = policy
        self.parse_policy = parse_policy
        self.connected = False
        self.applied = 0
        self.applied_seq = 0  # the newest audit seq installed here (catch_up reads past it)
        store.on_wait = self.catch_up
        self.lag: collections.deque[float] = collections.deque(maxlen=1000)
        self._task: asyncio.Task | None = None
        self._beat: asyncio.Task | None = None
        self._listening = asyncio.Event()

    async def start(self, wait: float = 10.0) -> None:
        """Start listening; waits (at most ``wait`` s) until the first LISTEN is in place,
        so no change committed after start-up can be missed."""
        self._task = asyncio.ensure_future(self._run())
        self._beat = asyncio.ensure_future(self._heartbeat())
        try:
            await asyncio.wait_for(self._listening.wait(), wait)
        except asyncio.TimeoutError:
            log.error("jupyter-vkeys: registry at PostgreSQL not listening yet; calls are "
                      "refused until it is")

    async def close(self) -> None:
        """Stop listening (gateway shutdown)."""
        for task in (self._task, self._beat):
            if task is not None:
                task.cancel()
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        try:
            self.store.replica_gone(self.replica)
        except Exception:  # PostgreSQL gone: the row goes stale and is ignored
            pass

    async def _heartbeat(self) -> None:
        """Tell writers this replica is alive (so they wait for its acknowledgements)."""
        while True:
            await asyncio.sleep(HEARTBEAT)
            if self.connected:
                try:
                    self.store.replica_seen(self.replica)
                except Exception:
                    log.warning("jupyter-vkeys: registry heartbeat failed")

    async def _run(self) -> None:
        import psycopg

        backoff, first = 0.1, True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True,
                                                             connect_timeout=5)
            except (psycopg.Error, OSError) as exc:
                self._down(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                cursor = await conn.execute("SELECT pg_backend_pid()")
                (listener_pid,) = await cursor.fetchone()
                seq = self.store.max_seq()
                if not first:
                    self.reload_all()  # what was notified while nobody listened
                self.store.replica_seen(self.replica, seq, listener_pid)
                self.applied_seq = max(self.applied_seq, seq)
                first, backoff = False, 0.1
                self.connected = True
                self._listening.set()
                async for note in conn.notifies():
                    self.apply(note.payload)
            except (psycopg.Error, OSError) as exc:
                self._down(exc)
            finally:
                self.connected = False
                try:
                    await conn.close()
                except Exception:
                    pass

    def _down(self, exc: BaseException) -> None:
        if self.connected or not self._listening.is_set():
            log.error("jupyter-vkeys: registry at PostgreSQL unreachable (%s); calls are "
                      "refused until it answers", type(exc).__name__)
        self.connected = False

    def apply(self, payload: str) -> None:
        """Install the row named by one notification (``kind:name|sent|seq``), then
        acknowledge it (the writer waits for every replica's acknowledgement)."""
        what, sent, seq = payload.rsplit("|", 2)
        kind, _, name = what.partition(":")
        if not self._install(kind, name):
            return
        self.applied += 1
        try:
            self.lag.append(max(time.time() - float(sent), 0.0))
            self.applied_seq = max(self.applied_seq, int(seq))
            self.store.replica_seen(self.replica, int(seq))
        except ValueError:
            pass
        except Exception:
            log.warning("jupyter-vkeys: acknowledging registry change %s failed", seq)

    def _install(self, kind: str, name: str) -> bool:
        """Read the row of one change (``key``/``policy``, its id or scope) back from
        PostgreSQL into memory; False (logged) when that failed."""
        try:
            if kind == "key":
                record = self.store.load_key(name)
                if record is not None:
                    self.registry.records[record.id] = record
                    self.policy.invalidate()
            elif kind == "policy":
                saved = self.store.load_policy(name)
                self.policy.set_scope_policy(name, self.parse_policy(saved) if saved else None)
        except Exception:  # a broken row must not stop the listener
            log.exception("jupyter-vkeys: applying registry change %s:%s failed", kind, name)
            return False
        return True

    def catch_up(self) -> None:
        """Install every change committed since the newest one installed here, read
        from the audit log, and acknowledge them. Called by
        :meth:`PgStore._await_replicas <.pg_store.PgStore._await_replicas>` while this
        replica's loop is blocked waiting for the others' acknowledgements: two replicas
        writing at once (two reapers, two kernels starting) would otherwise each wait
        the whole ``ack_timeout`` for the other, whose loop is blocked the same way and
        cannot read its notifications. The notifications still arrive afterwards;
        installing a row twice changes nothing."""
        rows = self.store.db.execute(
            "SELECT seq, action, target FROM vkeys_audit WHERE seq > %s ORDER BY seq "
            "LIMIT 1000", (self.applied_seq,)).fetchall()
        for seq, action, target in rows:
            if action.startswith("key.") and target.startswith("key:"):
                self._install("key", target[4:])
            elif action.startswith("policy."):
                self._install("policy", target)
            self.applied_seq = seq
        if rows:
            self.store.replica_seen(self.replica, self.applied_seq)

    def reload_all(self) -> None:
        """Replace every key and scope policy with what PostgreSQL holds now."""
        self.registry.records = {r.id: r for r in self.store.load_keys()}
        saved = self.store.load_policies()
        for scope in list(self.policy.scope_policies):
            if scope not in saved:
                self.policy.set_scope_policy(scope, None)
        for scope, policy in saved.items():
            try:
                self.policy.set_scope_policy(scope, self.parse_policy(policy))
            except Exception:
                log.exception("jupyter-vkeys: ignoring the saved policy of %s", scope)
        self.policy.invalidate()
