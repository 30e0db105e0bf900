"""The in-memory key registry: authenticate on the hot path, change through the store.

The gateway holds one :class:`KeyRegistry`. The data plane calls
:meth:`KeyRegistry.authenticate` on every request (a dict lookup and one
HMAC); the admin API and the CLI call the mutating methods, which write the
store (with its audit row) first and then swap the in-memory record, so a
revocation takes effect on the very next request.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from .keys import KeyRecord, MalformedToken, format_token, hash_secret, mint, new_secret, \
    parse_token, secret_matches
from .policy.spec import POLICY_FIELDS, parse_policy
from .store import Store

KEY_FIELDS = ("alias", "owner", "team", "project", "parent_id", "expires_at", "metadata")


class AuthError(Exception):
    """The presented credential is not a usable key. ``reason`` is one of
    ``missing``, ``malformed``, ``unknown``, ``revoked``, ``expired``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class InvalidKeyRequest(ValueError):
    """An admin request about keys is invalid (bad field, bad state); message says which."""


class KeyNotFound(InvalidKeyRequest):
    """An admin request names a key id that does not exist (the admin API answers 404)."""


def parse_time(value: Any, field: str) -> float | None:
    """Accept epoch seconds or RFC 3339 text for ``expires_at``-like fields."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidKeyRequest(f"{field} must be an RFC 3339 time or epoch seconds, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidKeyRequest(f"{field} must be an RFC 3339 time such as "
                            f"2026-12-31T00:00:00Z, got {value!r}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    raise InvalidKeyRequest(f"{field} must be an RFC 3339 time or epoch seconds, got {value!r}")


class KeyRegistry:
    """All keys of one gateway, in memory, backed by a :class:`Store`."""

    def __init__(self, store: Store, pepper: bytes, clock: Callable[[], float] = time.time,
                 on_change: Callable[[KeyRecord], None] | None = None) -> None:
        self.store = store
        self.pepper = pepper
        self.clock = clock
        self.on_change = on_change
        self.records: dict[str, KeyRecord] = {r.id: r for r in store.load_keys()}

    # -- hot path --------------------------------------------------------------------
    def authenticate(self, token: str | None) -> KeyRecord:
        """The active record for ``token``; raises :class:`AuthError` saying why not.

        Messages never echo the token or reveal whether another key exists.
        """
        if not token:
            raise AuthError("missing", "no virtual key given; send it as the API key "
                                       "(Authorization: Bearer vk-... or x-api-key: vk-...)")
        try:
            key_id, secret = parse_token(token)
        except MalformedToken as exc:
            raise AuthError("malformed", f"invalid API key: {exc}") from None
        record = self.records.get(key_id)
        now = self.clock()
        if record is None or not secret_matches(self.pepper, record, secret, now):
            raise AuthError("unknown", f"invalid API key: no virtual key matches "
                                       f"'vk-{key_id}_...'")
        state = record.state(now)
        if state == "revoked":
            raise AuthError("revoked", f"virtual key {key_id} was revoked")
        if state == "expired":
            raise AuthError("expired", f"virtual key {key_id} expired at "
                                       f"{datetime.fromtimestamp(record.expires_at or 0, timezone.utc).isoformat()}")
        parent = self.records.get(record.parent_id) if record.parent_id else None
        if parent is not None and parent.state(now) != "active":
            raise AuthError(parent.state(now), f"virtual key {key_id} belongs to key "
                                               f"{parent.id}, which is {parent.state(now)}")
        return record

    def get(self, key_id: str) -> KeyRecord | None:
        """The record with ``key_id`` or None (the policy engine looks parents up here)."""
        return self.records.get(key_id)

    # -- control plane ---------------------------------------------------------------
    def create(self, fields: Mapping[str, Any], *, actor: str) -> tuple[KeyRecord, str]:
        """Mint and persist a key from admin ``fields`` (key fields plus policy fields).

        Returns the record and its token; the token is never retrievable again.
        """
        attrs, policy = self._split(fields, None)
        parent_id = attrs.get("parent_id") or ""
        if parent_id:
            parent = self.records.get(parent_id)
            if parent is None:
                raise InvalidKeyRequest(f"parent key {parent_id!r} does not exist")
            for inherited in ("owner", "team", "project"):
                attrs.setdefault(inherited, getattr(parent, inherited))
                if not attrs[inherited]:
                    attrs[inherited] = getattr(parent, inherited)
        record, token = mint(self.pepper, self.clock(), policy=policy, **attrs)
        self.store.save_key(None, record, actor=actor, action="key.create")
        self._swap(record)
        return record, token

    def update(self, key_id: str, fields: Mapping[str, Any], *, actor: str) -> KeyRecord:
        """Apply a PATCH of key and policy fields; effective on the next request."""
        before = self._existing(key_id)
        attrs, policy = self._split(fields, before)
        after = before.evolve(policy=policy, **attrs)
        self.store.save_key(before, after, actor=actor, action="key.update")
        self._swap(after)
        return after

    def revoke(self, key_id: str, *, actor: str) -> KeyRecord:
        """Revoke a key now (idempotent). Children are refused through their parent."""
        before = self._existing(key_id)
        if before.revoked_at is not None:
            return before
        after = before.evolve(revoked_at=self.clock())
        self.store.save_key(before, after, actor=actor, action="key.revoke")
        self._swap(after)
        return after

    def rotate(self, key_id: str, *, actor: str, grace_seconds: float = 0) -> tuple[KeyRecord, str]:
        """Give a key a new secret; the old one stays valid ``grace_seconds`` longer."""
        before = self._existing(key_id)
        if before.state(self.clock()) != "active":
            raise InvalidKeyRequest(f"key {key_id} is {before.state(self.clock())}; only active keys rotate")
        if grace_seconds < 0:
            raise InvalidKeyRequest("grace_seconds must be >= 0")
        secret = new_secret()
        after = before.evolve(
            secret_hash=hash_secret(self.pepper, secret),
            previous_secret_hash=before.secret_hash if grace_seconds > 0 else None,
            previous_valid_until=self.clock() + grace_seconds if grace_seconds > 0 else None)
        self.store.save_key(before, after, actor=actor, action="key.rotate")
        self._swap(after)
        return after, format_token(key_id, secret)

    # -- internals -------------------------------------------------------------------
    def _existing(self, key_id: str) -> KeyRecord:
        record = self.records.get(key_id)
        if record is None:
            raise KeyNotFound(f"no key with id {key_id!r}")
        return record

    def _swap(self, record: KeyRecord) -> None:
        self.records[record.id] = record
        if self.on_change is not None:
            self.on_change(record)

    def _split(self, fields: Mapping[str, Any], before: KeyRecord | None
               ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Separate key attributes from policy fields and validate both."""
        if not isinstance(fields, Mapping):
            raise InvalidKeyRequest("expected a JSON object of key fields")
        unknown = set(fields) - set(KEY_FIELDS) - set(POLICY_FIELDS)
        if unknown:
            raise InvalidKeyRequest(f"unknown fields {sorted(unknown)}; key fields: "
                            f"{', '.join(KEY_FIELDS)}; policy fields: {', '.join(POLICY_FIELDS)}")
        attrs: dict[str, Any] = {}
        for name in KEY_FIELDS:
            if name not in fields:
                continue
            value = fields[name]
            if name == "expires_at":
                attrs[name] = parse_time(value, name)
            elif name == "metadata":
                if value is not None and not isinstance(value, Mapping):
                    raise InvalidKeyRequest("metadata must be an object of free key/value pairs")
                attrs[name] = dict(value or {})
            else:
                if value is not None and not isinstance(value, str):
                    raise InvalidKeyRequest(f"{name} must be a string, got {value!r}")
                attrs[name] = value or ""
        if before is not None and "parent_id" in attrs and attrs["parent_id"] != before.parent_id:
            raise InvalidKeyRequest("parent_id cannot change after creation")
        policy_fields = {k: v for k, v in fields.items() if k in POLICY_FIELDS}
        base = parse_policy(before.policy) if before is not None and before.policy else None
        policy = parse_policy(policy_fields, base=base).as_dict()
        return attrs, policy
