"""The one owner of a data directory, and the admin operations on what it holds.

Two things live here:

- :class:`DataDirLock`: an exclusive ``fcntl.flock`` on ``<data_dir>/lock``, taken by
  :meth:`VKeysGateway.start <jupyter_vkeys.gateway.core.VKeysGateway.start>` before the
  store or the journal is opened and held until :meth:`~VKeysGateway.stop`. A second
  gateway (another ``jupyter lab``, ``jupyter vkeys serve``, or the CLI's local mode) on
  the same directory gets :class:`DataDirBusy`, naming the holder's pid and URL.
  The gateway that serves publishes where its admin API answers in
  ``<data_dir>/gateway.json`` (:func:`publish`; read with :func:`running_gateway`), so
  ``jupyter vkeys keys ...`` goes through that API instead of opening the files.

- :class:`ControlPlane`: every admin operation (keys, policies, reports, audit), each
  validated completely before anything is written, so a refused change changes nothing
  (registry, store, policy engine, audit trail). The admin API handlers and the CLI's
  local mode both call it, so both answer the same JSON.

``gateway.json`` holds ``{"pid", "url", "started_at", "kind"}`` (``kind`` is
``standalone`` or ``jupyter``), mode 0600, written atomically and removed at stop. It
carries no credential: a standalone gateway's admin token stays in
``<data_dir>/admin_token`` (or ``$VKEYS_ADMIN_TOKEN``); inside Jupyter the CLI takes the
server's own token from ``jupyter_server.serverapp.list_running_servers()`` (the
server's runtime file, readable only by its user). A file whose pid is dead, or whose
directory lock nobody holds, is stale and ignored.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from .keys import KeyRecord
from .money import pico_to_usd
from .policy import PolicyEngine
from .policy.spec import EMPTY, PolicyError, check_scope, parse_policy
from .registry import MAX_KEY_ID_CHARS, KeyNotFound, KeyRegistry, check_grace, check_name
from .state import SharedLedger, StateUnavailable
from .store import Store, public_view
from .warehouse.sink import EventSink

__all__ = ["ControlPlane", "DataOwner", "DataDirBusy", "DataDirLock", "OperationError", "publish",
           "running_gateway", "unpublish", "LOCK_FILE", "ADDRESS_FILE"]

log = logging.getLogger("jupyter_vkeys")

LOCK_FILE = "lock"
ADDRESS_FILE = "gateway.json"
MAX_AUDIT_LIMIT = 10000
MAX_SEQ = 2**63 - 1
KEY_STATES = ("active", "revoked", "expired")
MAX_CALLS_LIMIT = 1000
# What /api/me/calls shows of each call (never prompt text or hashes).
CALL_FIELDS = ("request_id", "start_time", "end_time", "key_id", "key_alias", "parent_key_id",
               "kernel_id", "notebook_path", "cell_id", "execution_count", "provider",
               "operation", "request_model", "response_model", "status", "http_status",
               "input_tokens", "output_tokens", "cost_usd", "latency_ms", "budget_warning")


class OperationError(Exception):
    """A refused admin operation: HTTP ``status``, a message for the admin and an error
    ``kind`` (the ``type`` of the JSON error). Raised by :class:`ControlPlane`; the admin
    API answers it as ``{"error": {...}}``, the CLI prints the message."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


class DataDirBusy(RuntimeError):
    """Another process (or another gateway in this one) holds the data directory."""

    def __init__(self, data_dir: Path, pid: int | None, url: str | None) -> None:
        self.data_dir, self.pid, self.url = data_dir, pid, url
        where = f"serving its admin API at {url}" if url else \
            "not serving (a CLI command or a gateway still starting)"
        super().__init__(f"data directory {data_dir} is in use by process "
                         f"{pid if pid else '(unknown pid)'}, {where}; one gateway owns a "
                         "data directory: stop it, or use another data_dir")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _locked_by_someone(data_dir: Path) -> bool:
    """Whether the data directory's lock is held (probe: try to take it and let go)."""
    try:
        fd = os.open(data_dir / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def running_gateway(data_dir: str | Path) -> dict[str, Any] | None:
    """The published address of the gateway serving ``data_dir`` (``gateway.json``), or
    None when none runs (no file, a dead pid, or a lock nobody holds). Called by the CLI
    to choose between the API and local mode, and by :class:`DataDirBusy` messages."""
    root = Path(data_dir)
    info = _read_json(root / ADDRESS_FILE)
    if not info or not isinstance(info.get("url"), str):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid) or not _locked_by_someone(root):
        return None
    return info


def publish(data_dir: str | Path, url: str, kind: str = "standalone",
            **extra: Any) -> Path:
    """Write ``<data_dir>/gateway.json`` (mode 0600, atomically): where this process's
    gateway answers its admin API. Called by whoever serves: ``jupyter vkeys serve`` once
    it listens, the Jupyter extension once the server's URL is known (through
    :meth:`VKeysGateway.publish`). Only the lock holder may publish."""
    root = Path(data_dir)
    path = root / ADDRESS_FILE
    tmp = root / f".{ADDRESS_FILE}.{os.getpid()}.tmp"
    payload = {"pid": os.getpid(), "url": url, "started_at": time.time(), "kind": kind, **extra}
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f)
    os.chmod(tmp, stat.S_IRUSR | stat.S_IWUSR)
    os.replace(tmp, path)
    return path


def unpublish(data_dir: str | Path) -> None:
    """Remove ``gateway.json`` if this process wrote it; called at gateway stop."""
    path = Path(data_dir) / ADDRESS_FILE
    info = _read_json(path)
    if info is not None and info.get("pid") == os.getpid():
        try:
            path.unlink()
        except OSError:
            pass


class DataDirLock:
    """The exclusive lock on ``<data_dir>/lock`` (``fcntl.flock``: released by the kernel
    when the process dies, so a crash leaves no stale lock).

    :meth:`acquire` is called by :meth:`VKeysGateway.start` before anything in the
    directory is opened; :meth:`release` by :meth:`VKeysGateway.stop` after everything is
    closed. The lock file holds the holder's pid, for the message a second gateway gets.
    """

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self.fd is not None

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirBusy` (never waits)."""
        if self.fd is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT,
                     stat.S_IRUSR | stat.S_IWUSR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid = None
            try:
                pid = int((self.data_dir / LOCK_FILE).read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
            info = _read_json(self.data_dir / ADDRESS_FILE) or {}
            url = info.get("url") if info.get("pid") == pid or pid is None else None
            raise DataDirBusy(self.data_dir, pid or info.get("pid"), url) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Remove the published address and let go of the lock (idempotent)."""
        if self.fd is None:
            return
        unpublish(self.data_dir)
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _query_int(name: str, value: Any, low: int, high: int, default: int) -> int:
    """An integer query parameter within ``[low, high]``, or :class:`OperationError`."""
    if value is None:
        return default
    if isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        text = value.strip()
        if not (text.isdigit() or (text[:1] == "-" and text[1:].isdigit())) or len(text) > 20:
            raise OperationError(400, f"{name} must be an integer from {low} to {high}, "
                                      f"got {value[:40]!r}")
        value = int(text)
    if not isinstance(value, int) or not low <= value <= high:
        raise OperationError(400, f"{name} must be an integer from {low} to {high}, "
                                  f"got {value!r}")
    return value


class DataOwner(Protocol):
    """What the control plane works on: the parts of a started gateway that hold its data
    (:class:`jupyter_vkeys.gateway.core.VKeysGateway` is one; this module never imports it,
    so the gateway can own a control plane without a circle)."""

    registry: KeyRegistry
    policy: PolicyEngine
    store: Store
    sink: EventSink
    clock: Callable[[], float]
    shared: SharedLedger | None  # the replicas' ledger (state_url), None in one process


class ControlPlane:
    """The admin operations of one started gateway.

    Created by :meth:`VKeysGateway.start`; called by the admin API handlers
    (:mod:`jupyter_vkeys.gateway.admin`) and the CLI's local mode, on the gateway's loop.
    Every method returns JSON-ready data and raises :class:`OperationError`,
    :class:`~jupyter_vkeys.registry.InvalidKeyRequest` (400),
    :class:`~jupyter_vkeys.registry.KeyNotFound` (404) or
    :class:`~jupyter_vkeys.policy.PolicyError` (400) before anything is written.
    """

    def __init__(self, gateway: DataOwner) -> None:
        self.gateway = gateway

    # -- keys ------------------------------------------------------------------------
    def list_keys(self, filters: Mapping[str, str | None] | None = None) -> dict[str, Any]:
        """``GET /keys``: public records with their state, oldest first; ``filters`` match
        ``owner``, ``team``, ``project``, ``state``, ``parent_id`` exactly."""
        now = self.gateway.clock()
        wanted = {k: v for k, v in (filters or {}).items() if v is not None}
        for name, value in wanted.items():
            if name == "state" and value not in KEY_STATES:
                raise OperationError(400, f"state must be one of {', '.join(KEY_STATES)}, "
                                          f"got {value[:40]!r}")
            if name in ("owner", "team", "project") and value:
                check_name(name, value)
            if name == "parent_id" and len(value) > MAX_KEY_ID_CHARS:
                raise OperationError(400, f"parent_id must be a key id of at most "
                                          f"{MAX_KEY_ID_CHARS} characters")
        rows = []
        for record in self.gateway.registry.records.values():
            view = public_view(record)
            view["state"] = record.state(now)
            if all(str(view.get(k)) == v for k, v in wanted.items()):
                rows.append(view)
        rows.sort(key=lambda r: (r["created_at"], r["id"]))
        return {"keys": rows}

    def create_key(self, fields: Mapping[str, Any], *, actor: str) -> dict[str, Any]:
        """``POST /keys``: mint a key; the answer carries its token (``key``), shown once."""
        record, token = self.gateway.registry.create(fields, actor=actor)
        return {**self.key_report(record), "key": token}

    def get_key(self, key_id: str) -> dict[str, Any]:
        """``GET /keys/{id}``: record, limits and spend on every scope of its path."""
        return self.key_report(self._record(key_id))

    def update_key(self, key_id: str, fields: Mapping[str, Any], *, actor: str
                   ) -> dict[str, Any]:
        """``PATCH /keys/{id}``: change key and policy fields (all validated first)."""
        self._record(key_id)
        return self.key_report(self.gateway.registry.update(key_id, fields, actor=actor))

    def revoke_key(self, key_id: str, *, actor: str) -> dict[str, Any]:
        """``POST /keys/{id}/revoke`` (idempotent)."""
        self._record(key_id)
        return self.key_report(self.gateway.registry.revoke(key_id, actor=actor))

    def rotate_key(self, key_id: str, body: Mapping[str, Any] | None, *, actor: str
                   ) -> dict[str, Any]:
        """``POST /keys/{id}/rotate`` with ``{"grace_seconds": n}``: a new secret."""
        body = body or {}
        unknown = set(body) - {"grace_seconds"}
        if unknown:
            raise OperationError(400, f"unknown fields {sorted(map(str, unknown))[:5]}; "
                                      "rotate takes only grace_seconds")
        grace = check_grace(body.get("grace_seconds", 0))
        self._record(key_id)
        record, token = self.gateway.registry.rotate(key_id, actor=actor, grace_seconds=grace)
        return {**self.key_report(record), "key": token}

    # -- policies --------------------------------------------------------------------
    def list_policies(self) -> dict[str, Any]:
        """``GET /policies``: every scope policy with its spend."""
        scopes = sorted(self.gateway.policy.scope_policies)
        return {"policies": [self.scope_report(s) for s in scopes]}

    def get_policy(self, scope: str) -> dict[str, Any]:
        """``GET /policies/{scope}``: policy, spend, holds and resets of one scope."""
        return self.scope_report(scope)

    def set_policy(self, scope: str, fields: Mapping[str, Any], *, actor: str,
                   replace: bool = True) -> dict[str, Any]:
        """``PUT`` (``replace``) or ``PATCH /policies/{scope}``."""
        self._set_scope_policy(scope, fields, actor=actor, replace=replace)
        return self.scope_report(scope)

    def delete_policy(self, scope: str, *, actor: str) -> dict[str, Any]:
        """``DELETE /policies/{scope}`` (idempotent: deleting nothing writes nothing)."""
        self._set_scope_policy(scope, None, actor=actor)
        return self.scope_report(scope)

    def _set_scope_policy(self, scope: str, fields: Mapping[str, Any] | None, *, actor: str,
                          replace: bool = True) -> dict[str, Any] | None:
        """Validate, persist (with audit) and install a scope policy; returns the saved dict."""
        gw = self.gateway
        check_scope(scope)
        if scope.startswith("key:"):
            raise PolicyError("key policies are changed with PATCH /api/keys/{id}")
        before = gw.store.load_policies().get(scope)
        if fields is None:
            after = None
        else:
            base = None
            if not replace and before is not None:
                try:
                    base = parse_policy(before)
                except PolicyError:  # saved by an older version with laxer checks
                    base = None
            after = parse_policy(fields, base=base).as_dict() or None
        if before == after:
            return after
        installed = parse_policy(after) if after else None
        gw.store.save_policy(scope, before, after, actor=actor)
        gw.policy.set_scope_policy(scope, installed)
        return after

    # -- reports ---------------------------------------------------------------------
    def scope_report(self, scope: str) -> dict[str, Any]:
        """Policy, spend, holds and reset times of a scope (admin API, widgets)."""
        check_scope(scope)
        engine = self.gateway.policy
        if scope.startswith("key:"):
            record = self.gateway.registry.get(scope[4:])
            policy = self._key_policy(record) if record else EMPTY
        else:
            policy = engine.scope_policies.get(scope) or EMPTY
        return self._report(scope, policy)

    def key_report(self, record: KeyRecord) -> dict[str, Any]:
        """A key's public record plus its limits and spend on every scope of its path."""
        view = public_view(record) or {}
        view["state"] = record.state(self.gateway.clock())
        view["limits"] = [self._path_report(scope, record)
                          for scope in self.gateway.policy.scope_path(record)]
        return view

    def me(self, record: KeyRecord) -> dict[str, Any]:
        """``GET /api/me`` for the calling virtual key: only what is the caller's own.

        The key, its parent and the key's own user scope are shown in full (limits,
        spend, holds, rate usage): that spend is the caller's. The team and project
        scopes are shown as limits only (policy, budget caps, periods and reset times),
        because their spend is other people's; ``global`` is not shown.
        """
        view = public_view(record) or {}
        view["state"] = record.state(self.gateway.clock())
        limits = []
        for scope in self.gateway.policy.scope_path(record):
            if scope == "global":
                continue
            report = self._path_report(scope, record)
            if scope.startswith(("team:", "project:")):
                report = {"scope": scope, "policy": report["policy"], "visibility": "limits",
                          "budgets": [{k: b[k] for k in ("usd", "period", "soft", "resets_at")
                                       if k in b} for b in report["budgets"]]}
            else:
                report["visibility"] = "full"
            limits.append(report)
        view["limits"] = limits
        return view

    def my_calls(self, record: KeyRecord, limit: Any = None) -> dict[str, Any]:
        """``GET /api/me/calls?limit=<n>``: the caller's recent calls, newest first.

        Called by the handler behind ``/api/me/calls`` (the ``MyUsage`` widget asks it
        with the kernel's own key). The caller's calls are those of its owner (a user's
        kernels, personal key and CI keys alike), or of the key alone when it has no
        owner. They come from the gateway's in-memory ring of recent events (the
        sink's, the last ``keep_recent`` calls since this process started); the
        warehouse holds them all. No prompt text, no error bodies of other keys.
        """
        count = _query_int("limit", limit, 1, MAX_CALLS_LIMIT, 200)
        owner = record.owner
        events = getattr(self.gateway.sink, "events", None) or []
        calls = []
        for event in reversed(events):
            if event.get("status") == "hold":
                continue
            mine = (event.get("user") == owner) if owner else event.get("key_id") == record.id
            if mine:
                calls.append({name: event.get(name) for name in CALL_FIELDS})
                if len(calls) >= count:
                    break
        return {"owner": owner, "calls": calls, "source": "recent",
                "note": "the gateway's most recent calls since it started; the warehouse "
                        "holds every call"}

    def audit(self, since: Any = None, limit: Any = None) -> dict[str, Any]:
        """``GET /audit?since=<seq>&limit=<n>``: admin actions after ``since``, oldest
        first; ``since`` 0..2^63-1, ``limit`` 1..10000 (default 1000)."""
        since_seq = _query_int("since", since, 0, MAX_SEQ, 0)
        count = _query_int("limit", limit, 1, MAX_AUDIT_LIMIT, 1000)
        return {"audit": self.gateway.store.audit_rows(since_seq, count)}

    # -- internals -------------------------------------------------------------------
    def _record(self, key_id: str) -> KeyRecord:
        record = self.gateway.registry.get(key_id)
        if record is None:
            raise KeyNotFound(f"no key with id {key_id[:80]!r}")
        return record

    def _key_policy(self, record: KeyRecord):
        try:
            return self.gateway.policy.key_policy(record)
        except PolicyError:  # a record saved by an older version with laxer checks
            return EMPTY

    def _path_report(self, scope: str, record: KeyRecord) -> dict[str, Any]:
        """Report of one scope on ``record``'s path (no name check: the path is built from
        the record, which older versions may have saved with names now refused)."""
        engine = self.gateway.policy
        if scope.startswith("key:"):
            owner = record if scope[4:] == record.id else self.gateway.registry.get(scope[4:])
            policy = self._key_policy(owner) if owner is not None else EMPTY
        else:
            policy = engine.scope_policies.get(scope) or EMPTY
        return self._report(scope, policy)

    def _report(self, scope: str, policy) -> dict[str, Any]:
        """The engine's report, without leaving counters behind for scopes nobody uses
        (a GET of any scope name must not grow the engine's state)."""
        engine = self.gateway.policy
        existed = scope in engine.states
        report = engine.report(scope, policy)
        if not existed:
            engine.states.pop(scope, None)
        if self.gateway.shared is not None and policy.budgets:
            self._shared_budgets(report, scope, policy)
        return report

    def _shared_budgets(self, report: dict[str, Any], scope: str, policy) -> None:
        """With a shared ledger (``state_url``), replace the spend and holds of
        ``report``'s budgets (the local engine's: this replica's share) with the shared
        figures every replica reads alike; ``report["figures"]`` says which they are.
        Requests, tokens and calls in flight stay this replica's own counts."""
        try:
            figures = self.gateway.shared.read_budgets(
                scope, [budget.period for budget in policy.budgets], self.gateway.clock())
        except StateUnavailable as exc:
            report["figures"] = "replica"
            report["figures_note"] = exc.message
            return
        for entry, budget, (spent, held) in zip(report["budgets"], policy.budgets, figures):
            entry["spent_usd"] = pico_to_usd(spent)
            entry["held_usd"] = pico_to_usd(held)
            entry["remaining_usd"] = pico_to_usd(max(budget.pico - spent - held, 0))
            entry["warned"] = budget.soft is not None and spent >= budget.soft * budget.pico
        report["figures"] = "shared"
